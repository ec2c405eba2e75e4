"""``mtls-hooks keygen``: make a webhook signing key.

An HMAC secret (``whsec_``) is one value both ends hold; it is printed, or written to a
file with ``--out``. An Ed25519 pair splits the roles: the signing key (``whsk_``) stays
with the sender and goes only to a file created 0600, and only the public key (``whpk_``),
which the receiver needs, is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from typing import Any

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.core._signing import Ed25519SigningKey, HmacSecret

__all__ = ["add_parser", "run"]

_EPILOG = """\
examples:
  mtls-hooks keygen                                  # print a new whsec_ secret
  mtls-hooks keygen --out whsec.txt                  # write it to a 0600 file instead
  mtls-hooks keygen --ed25519 --out sender.whsk      # print the whpk_ public key

The sender reads a key file with `mtls-hooks send --secret-file FILE`; the receiver takes
the whsec_ secret or the whpk_ public key in keys=[...] or MTLS_HOOKS_KEYS.
"""


def add_parser(subparsers: Any) -> None:
    """Register the ``keygen`` subcommand on the dispatcher's subparsers."""
    parser = subparsers.add_parser(
        "keygen",
        help="make a webhook signing key (whsec_ secret, or whsk_/whpk_ Ed25519 pair)",
        description="Make a Standard Webhooks signing key.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--ed25519",
        action="store_true",
        help="an Ed25519 pair: the whsk_ signing key to --out, the whpk_ public key printed",
    )
    parser.add_argument("--out", metavar="FILE", help="write the secret key here (mode 0600)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.set_defaults(run=run)


def write_secret_file(path: str, text: str, *, force: bool = False) -> None:
    """Write ``text`` and a newline to a new file only its owner can read.

    Args:
        path: the file to create.
        text: the secret.
        force: replace an existing file instead of refusing.

    Raises:
        ConfigurationError: the file exists and ``force`` is false, or it cannot be written.
    """
    data = (text + "\n").encode("ascii")
    try:
        if not force:
            # O_EXCL: never follow a planted symlink nor reuse a file someone else can read.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            return
        # Replacing: a fresh 0600 file renamed over the old one, so the secret never sits in
        # a file that keeps the old file's (perhaps wider) mode, and no reader sees half.
        fd, temporary = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".keygen-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    except FileExistsError as exc:
        raise ConfigurationError(f"{path} exists; give --force to replace it") from exc
    except OSError as exc:
        raise ConfigurationError(f"cannot write {path}: {exc.strerror or exc}") from exc


def run(args: argparse.Namespace) -> int:
    """Make the key; print what may be shown and write what must not. Returns 0.

    Raises:
        ConfigurationError: ``--ed25519`` without ``--out``, ``--force`` without ``--out``,
            or an ``--out`` file that exists (without ``--force``) or cannot be written.
    """
    if args.force and not args.out:
        raise ConfigurationError("--force only applies to --out FILE")
    if args.ed25519:
        if not args.out:
            raise ConfigurationError(
                "--ed25519 needs --out FILE: the whsk_ signing key is written to a file, "
                "and only the whpk_ public key is printed"
            )
        signing_key = Ed25519SigningKey.generate()
        write_secret_file(args.out, signing_key.export(), force=args.force)
        print(signing_key.public_key.export())
        return 0
    secret = HmacSecret.generate().export()
    if args.out:
        write_secret_file(args.out, secret, force=args.force)
    else:
        print(secret)
    return 0
