"""``certs-tool``: a thin command line over the certs_tool API.

Every failure is one line on stderr, ``certs-tool: error: ...``, and exit status 2 for
usage errors or 1 for everything else; never a traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from certs_tool._blob import Blob
from certs_tool._ca import CA
from certs_tool._errors import CertsToolError
from certs_tool._inspect import describe, format_human
from certs_tool._issued import IssuedCert, load_certificates, pem_of
from certs_tool._keys import KeyType, backup_key, load_private_key
from certs_tool._passphrase import add_passphrase_options, existing_passphrase, new_passphrase
from certs_tool._pins import pin_of
from certs_tool._store import CA_CERT_FILE, CA_KEY_FILE, INDEX_FILE
from certs_tool._verify import verify_certificate_file
from mtls_hooks.core._identity import spki_pin

__all__ = ["main"]

PROG = "certs-tool"
_EXIT_ERROR = 1
_EXIT_USAGE = 2
_EXIT_NOT_VERIFIED = 2  # as `openssl verify`
_QUICKSTART_HOSTS = ("localhost", "127.0.0.1", "::1")


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line, like every other error of the tool."""

    def error(self, message: str) -> NoReturn:
        self.exit(_EXIT_USAGE, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def _utc_days(days: int | None) -> dt.datetime | None:
    return None if days is None else dt.datetime.now(dt.UTC) + dt.timedelta(days=days)


def _load_ca(args: argparse.Namespace) -> CA:
    passphrase = existing_passphrase(args, "ca-", "the CA key", Path(args.ca) / CA_KEY_FILE)
    return CA.load_dir(args.ca, passphrase)


def _refuse_existing(paths: Sequence[Path], force: bool) -> None:
    # Check every output before writing any, so a refusal leaves nothing half-done.
    for path in paths:
        if path.exists() and not force:
            raise CertsToolError(f"{path} already exists (use --force to overwrite)")


def _write_identity(
    issued: IssuedCert, stem: Path, key_passphrase: bytes | None, force: bool
) -> tuple[Path, Path]:
    cert_path, key_path = stem.with_name(stem.name + ".pem"), stem.with_name(stem.name + "-key.pem")
    _refuse_existing([cert_path, key_path], force)
    issued.private_key_pem(key_passphrase).write_to_path(key_path, force=force)
    issued.chain_pem.write_to_path(cert_path, force=force)
    return cert_path, key_path


def _print(text: str) -> None:
    sys.stdout.write(text + "\n")


# -- subcommands --------------------------------------------------------------------------


def _cmd_quickstart(args: argparse.Namespace) -> None:
    root = Path(args.dir)
    names = [
        CA_CERT_FILE,
        CA_KEY_FILE,
        INDEX_FILE,
        "server.pem",
        "server-key.pem",
        "client.pem",
        "client-key.pem",
    ]
    _refuse_existing([root / name for name in names], args.force)
    ca = CA.init(root, force=args.force, name="certs-tool quickstart CA", key_type=args.key_type)
    server = ca.issue_server(*_QUICKSTART_HOSTS, key_type=args.key_type)
    client = ca.issue_client(args.client_name, key_type=args.key_type)
    _write_identity(server, root / "server", None, args.force)
    _write_identity(client, root / "client", None, args.force)
    _print(f"wrote a test PKI to {root}/ (keys are 0600 and unencrypted: for tests only)")
    _print(f"  CA      ca.pem, ca-key.pem          {ca.certificate.subject.rfc4514_string()}")
    _print(f"  server  server.pem, server-key.pem  {', '.join(_QUICKSTART_HOSTS)}")
    _print(f"  client  client.pem, client-key.pem  CN={args.client_name}")
    _print(f"client SPKI pin: {client.spki_pin}")


def _cmd_init(args: argparse.Namespace) -> None:
    passphrase = new_passphrase(args, "", "the new CA key")
    not_after = _utc_days(args.days)
    if args.parent:
        parent_key = Path(args.parent) / CA_KEY_FILE
        parent = CA.load_dir(
            args.parent, existing_passphrase(args, "parent-", "the parent CA key", parent_key)
        )
        ca = parent.create_intermediate(name=args.name, key_type=args.key_type, not_after=not_after)
        ca.save_dir(args.dir, passphrase, force=args.force)
    else:
        ca = CA.init(
            args.dir,
            passphrase=passphrase,
            force=args.force,
            name=args.name,
            key_type=args.key_type,
            not_after=not_after,
        )
    _print(f"CA {ca.certificate.subject.rfc4514_string()} in {args.dir}")
    _print(f"CA SPKI pin: {ca.spki_pin}")


def _cmd_server(args: argparse.Namespace) -> None:
    key_passphrase = new_passphrase(args, "key-", "the new key")
    ca = _load_ca(args)
    issued = ca.issue_server(
        *args.hosts,
        common_name=args.common_name,
        key_type=args.key_type,
        not_after=_utc_days(args.days),
    )
    cert_path, key_path = _write_identity(
        issued, Path(args.out or "server"), key_passphrase, args.force
    )
    _print(f"wrote {cert_path} and {key_path} (serial {issued.certificate.serial_number:x})")
    _print(f"SPKI pin: {issued.spki_pin}")


def _cmd_client(args: argparse.Namespace) -> None:
    key_passphrase = new_passphrase(args, "key-", "the new key")
    ca = _load_ca(args)
    key = None
    if args.reuse_key:
        data = Blob.from_path(args.reuse_key, secret=True).bytes()
        key_pass = existing_passphrase(args, "reuse-", "the reused key", args.reuse_key)
        key = load_private_key(data, key_pass, source=args.reuse_key)
    issued = ca.issue_client(
        args.common_name, uris=args.uri, dns=args.dns, emails=args.email,
        key_type=args.key_type, key=key, not_after=_utc_days(args.days),
    )  # fmt: skip
    stem = args.out or re.sub(r"[^A-Za-z0-9._-]", "_", args.common_name)
    cert_path, key_path = _write_identity(issued, Path(stem), key_passphrase, args.force)
    _print(f"wrote {cert_path} and {key_path} (serial {issued.certificate.serial_number:x})")
    _print(f"SPKI pin: {issued.spki_pin}")


def _cmd_revoke(args: argparse.Namespace) -> None:
    ca = _load_ca(args)
    for entry in ca.revoke_name(args.name):
        _print(f"revoked {entry.name} (serial {entry.serial:x})")
    _print(f"run '{PROG} crl --ca {args.ca}' to publish a new CRL")


def _cmd_crl(args: argparse.Namespace) -> None:
    ca = _load_ca(args)
    crl = ca.crl_pem(next_update=dt.timedelta(days=args.days))
    if args.out:
        crl.write_to_path(args.out, force=args.force)
        _print(f"wrote {args.out}")
    else:
        sys.stdout.write(crl.bytes().decode("ascii"))


def _cmd_renew(args: argparse.Namespace) -> None:
    ca = _load_ca(args)
    old = load_certificates(Blob.from_path(args.cert).bytes(), source=args.cert)[0]
    new = ca.renew_certificate(old, not_after=_utc_days(args.days))
    out = Path(args.out or args.cert)
    pem_of(new, *ca.issuing_chain).write_to_path(out, force=args.force)
    until = new.not_valid_after_utc.isoformat()
    _print(f"wrote {out}: serial {new.serial_number:x}, valid until {until}")
    _print(f"SPKI pin (unchanged): {spki_pin(new)}")


def _cmd_inspect(args: argparse.Namespace) -> None:
    passphrase = existing_passphrase(args, "", "the key", args.file)
    items = describe(Blob.from_path(args.file).bytes(), passphrase, source=args.file)
    _print(json.dumps(items, indent=2) if args.json else format_human(items))


def _cmd_pin(args: argparse.Namespace) -> None:
    passphrase = existing_passphrase(args, "", "the key", args.file)
    pin = pin_of(Blob.from_path(args.file).bytes(), passphrase, source=args.file)
    _print(pin.replace("sha256/", "sha256//", 1) if args.curl else pin)


def _cmd_p12(args: argparse.Namespace) -> None:
    key_passphrase = existing_passphrase(args, "key-", "the key", args.key)
    out_passphrase = new_passphrase(args, "", "the PKCS#12 file")
    issued = IssuedCert.from_files(args.cert, args.key, key_passphrase)
    issued.pkcs12(out_passphrase).write_to_path(args.out, force=args.force)
    _print(f"wrote {args.out} ({'encrypted' if out_passphrase else 'NOT encrypted'})")


def _cmd_backup_pin(args: argparse.Namespace) -> None:
    passphrase = new_passphrase(args, "", "the backup key")
    _print(
        backup_key(args.key_out, key_type=args.key_type, passphrase=passphrase, force=args.force)
    )


def _cmd_verify(args: argparse.Namespace) -> int:
    why = verify_certificate_file(args.cert, args.ca, args.crl, purpose=args.purpose)
    if why is None:
        _print(f"{args.cert}: OK")
        return 0
    _print(f"{args.cert}: verification failed: {why}")
    return _EXIT_NOT_VERIFIED


# -- parser ---------------------------------------------------------------------------------


def _key_type_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key-type",
        default=KeyType.EC_P256.value,
        choices=[kind.value for kind in KeyType],
        help="key algorithm (default: %(default)s)",
    )


def _ca_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ca", required=True, metavar="DIR", help="the CA directory (see init)")
    add_passphrase_options(parser, "ca-", "the CA key")


def _force_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="overwrite existing files")


def _args_quickstart(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--client-name", default="client", help="client CN (default: %(default)s)")
    _key_type_option(p)
    _force_option(p)


def _args_init(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--name", default="certs-tool CA", help="CA common name (default: %(default)s)")
    p.add_argument("--days", type=int, help="validity in days (default: 1825)")
    p.add_argument("--parent", metavar="PARENT_DIR", help="issue an intermediate CA under this CA")
    _key_type_option(p)
    add_passphrase_options(p, "", "the new CA key (default: unencrypted)")
    add_passphrase_options(p, "parent-", "the parent CA key")
    _force_option(p)


def _leaf_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="STEM", help="write STEM.pem (with chain) and STEM-key.pem")
    p.add_argument("--days", type=int, help="validity in days (default: 90)")
    _key_type_option(p)
    add_passphrase_options(p, "key-", "the new key (default: unencrypted)")
    _force_option(p)


def _args_server(p: argparse.ArgumentParser) -> None:
    _ca_options(p)
    p.add_argument("hosts", nargs="+", metavar="HOST", help="DNS name, wildcard or IP address")
    p.add_argument("--common-name", help="subject CN (default: the first HOST)")
    _leaf_options(p)


def _args_client(p: argparse.ArgumentParser) -> None:
    _ca_options(p)
    p.add_argument("common_name", metavar="COMMON_NAME")
    p.add_argument("--uri", action="append", default=[], help="URI SAN, e.g. a SPIFFE ID")
    p.add_argument("--dns", action="append", default=[], help="DNS SAN")
    p.add_argument("--email", action="append", default=[], help="email SAN")
    p.add_argument("--reuse-key", metavar="KEY", help="certify this existing key (pin stays)")
    add_passphrase_options(p, "reuse-", "the reused key")
    _leaf_options(p)


def _args_revoke(p: argparse.ArgumentParser) -> None:
    _ca_options(p)
    p.add_argument("name", metavar="NAME_OR_SERIAL", help="common name, or serial (0x... hex)")


def _args_crl(p: argparse.ArgumentParser) -> None:
    _ca_options(p)
    p.add_argument("--out", metavar="FILE")
    p.add_argument("--days", type=int, default=7, help="until nextUpdate (default: %(default)s)")
    _force_option(p)


def _args_renew(p: argparse.ArgumentParser) -> None:
    _ca_options(p)
    p.add_argument("cert", metavar="CERT")
    p.add_argument("--out", metavar="FILE", help="where to write (default: CERT, with --force)")
    p.add_argument("--days", type=int, help="validity in days (default: as before)")
    _force_option(p)


def _args_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_passphrase_options(p, "", "an encrypted key")


def _args_pin(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE")
    p.add_argument("--curl", action="store_true", help="print curl's sha256//<base64> form")
    add_passphrase_options(p, "", "an encrypted key")


def _args_p12(p: argparse.ArgumentParser) -> None:
    p.add_argument("cert", metavar="CERT")
    p.add_argument("key", metavar="KEY")
    p.add_argument("--out", required=True, metavar="FILE")
    add_passphrase_options(p, "", "the PKCS#12 file (default: unencrypted)")
    add_passphrase_options(p, "key-", "KEY")
    _force_option(p)


def _args_backup_pin(p: argparse.ArgumentParser) -> None:
    p.add_argument("key_out", metavar="KEY_OUT")
    _key_type_option(p)
    add_passphrase_options(p, "", "the backup key")
    _force_option(p)


def _args_verify(p: argparse.ArgumentParser) -> None:
    p.add_argument("cert", metavar="CERT", help="PEM (leaf first, then intermediates) or DER")
    p.add_argument("--ca", action="append", required=True, metavar="CA", help="CA bundle (PEM)")
    p.add_argument("--crl", action="append", default=[], metavar="CRL", help="CRL (repeatable)")
    p.add_argument(
        "--purpose",
        choices=("client", "server"),
        default="client",
        help="required extended key usage (default: %(default)s)",
    )


_Handler = Callable[[argparse.Namespace], int | None]
_COMMANDS: tuple[tuple[str, str, Callable[[argparse.ArgumentParser], None], _Handler], ...] = (
    ("quickstart", "write a CA, a server and a client identity to DIR",
     _args_quickstart, _cmd_quickstart),
    ("init", "create a CA in DIR (a root, or an intermediate with --parent)",
     _args_init, _cmd_init),
    ("server", "issue a server certificate (serverAuth) for HOST...", _args_server, _cmd_server),
    ("client", "issue a client certificate (clientAuth) named COMMON_NAME",
     _args_client, _cmd_client),
    ("revoke", "revoke every certificate with this name or serial", _args_revoke, _cmd_revoke),
    ("crl", "sign a fresh CRL (PEM) to stdout or --out", _args_crl, _cmd_crl),
    ("renew", "reissue CERT for the same key (the SPKI pin stays)", _args_renew, _cmd_renew),
    ("inspect", "describe a certificate, chain, CRL or key", _args_inspect, _cmd_inspect),
    ("pin", "print the SPKI pin of a certificate, public or private key", _args_pin, _cmd_pin),
    ("p12", "export CERT (with its chain) and KEY as PKCS#12", _args_p12, _cmd_p12),
    ("backup-pin", "write a backup key to KEY_OUT and print only its pin",
     _args_backup_pin, _cmd_backup_pin),
    ("verify", "verify CERT against CAs and CRLs (exit 2 if it fails, as openssl verify)",
     _args_verify, _cmd_verify),
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The ``certs-tool`` argument parser."""
    parser = _Parser(prog=PROG, description="A private test PKI for mutual TLS.")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    for name, summary, add_arguments, handler in _COMMANDS:
        command = sub.add_parser(name, help=summary, description=summary)
        add_arguments(command)
        command.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``certs-tool`` and return its exit status.

    Args:
        argv: the arguments after the program name; defaults to ``sys.argv[1:]``.
    """
    args = build_parser().parse_args(argv)
    try:
        status = args.handler(args)
    except CertsToolError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return _EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: error: interrupted\n")
        return 130
    return status or 0
