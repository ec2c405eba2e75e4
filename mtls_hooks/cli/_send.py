"""``mtls-hooks send URL``: deliver one signed webhook over mTLS and show every attempt.

With ``--file events.jsonl`` it sends one event per line instead, with bounded concurrency,
a progress display and a summary table (:mod:`mtls_hooks.cli._bulk`).

Its retry defaults suit a person at a terminal (:meth:`RetryPolicy.interactive`: a few short,
jittered waits, done within about a minute); the library's defaults reach hours further.
Secrets and passphrases are read from the environment or a file, so they stay out of ``ps``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from tenacity import stop_after_attempt

from mtls_hooks.cli._bulk import send_file
from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.sender._results import redact_url
from mtls_hooks.sender._retry import RetryPolicy
from mtls_hooks.sender._sync import WebhookSender

__all__ = ["add_parser", "run"]

_EPILOG = """\
examples:
  MTLS_HOOKS_SECRET=whsec_... mtls-hooks send https://hooks.example:8443/events \\
      --cert client.pem --key client.key --ca receiver-ca.pem \\
      --pin sha256/AAAA...= --type invoice.paid --data '{"id": "inv_1"}'
  mtls-hooks send URL --pkcs12 client.p12 --key-password-file pass.txt \\
      --secret-file whsec.txt --data @event.json --max-attempts 2
  mtls-hooks send URL --cert client.pem --key client.key --ca receiver-ca.pem \\
      --file events.jsonl --concurrency 16 --skip-bad-lines

Exit status: 0 when the receiver answered 2xx (every event with --file), 1 otherwise.
"""


def add_parser(subparsers: Any) -> None:
    """Register the ``send`` subcommand on the dispatcher's subparsers."""
    parser = subparsers.add_parser(
        "send",
        help="send one signed webhook over mTLS, with retries",
        description="Sign a payload (Standard Webhooks) and deliver it over mutual TLS.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", metavar="URL", help="the receiver's https:// endpoint")
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--cert", metavar="PEM", help="client certificate chain")
    tls.add_argument("--key", metavar="PEM", help="client private key (may be encrypted)")
    tls.add_argument("--pkcs12", metavar="P12", help="client key and certificate as PKCS#12")
    tls.add_argument("--key-password-env", metavar="VAR", help="variable holding the passphrase")
    tls.add_argument("--key-password-file", metavar="FILE", help="file whose first line is it")
    tls.add_argument("--ca", metavar="PEM", help="CA bundle for the receiver (default: system)")
    tls.add_argument(
        "--pin",
        dest="pins",
        action="append",
        default=[],
        metavar="PIN",
        help="receiver SPKI pin sha256/<base64> or SHA-256 fingerprint (repeatable)",
    )
    tls.add_argument("--http2", action="store_true", help="offer HTTP/2")
    signing = parser.add_argument_group("signing (default: $MTLS_HOOKS_SECRET)")
    signing.add_argument(
        "--secret",
        dest="secrets",
        action="append",
        default=[],
        metavar="KEY",
        help="whsec_ or whsk_ key (repeatable, for rotation; visible in ps: prefer the others)",
    )
    signing.add_argument("--secret-env", metavar="VAR", help="variable holding the key(s)")
    signing.add_argument("--secret-file", metavar="FILE", help="file with one key per line")
    message = parser.add_argument_group("message")
    message.add_argument("--data", metavar="JSON|@FILE", help="the JSON payload (default {})")
    message.add_argument(
        "--type", dest="event_type", metavar="T", help='wrap it as {"type", "timestamp", "data"}'
    )
    message.add_argument("--id", dest="webhook_id", metavar="ID", help="webhook-id (default new)")
    bulk = parser.add_argument_group("bulk (one JSON event per line)")
    bulk.add_argument("--file", metavar="JSONL", help="send every line of this file")
    bulk.add_argument(
        "--concurrency", type=int, default=8, metavar="N", help="deliveries in flight (8)"
    )
    bulk.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="report malformed lines and send the rest (default: send nothing)",
    )
    retry = parser.add_argument_group("retries")
    retry.add_argument("--max-attempts", type=int, default=4, metavar="N", help="default 4")
    retry.add_argument("--deadline", type=float, default=60.0, metavar="S", help="default 60 s")
    retry.add_argument("--timeout", type=float, default=15.0, metavar="S", help="per attempt")
    parser.set_defaults(run=run)


def _first_line(path: str, what: str) -> str:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} file {path}: {exc.strerror}") from exc
    if not lines or not lines[0].strip():
        raise ConfigurationError(f"{what} file {path} is empty")
    return lines[0].strip()


def _env(name: str, what: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigurationError(f"{what} variable {name} is not set")
    return value


def _signing_keys(args: argparse.Namespace) -> list[str]:
    keys = list(args.secrets)
    if args.secret_env:
        keys += _env(args.secret_env, "secret").split()
    if args.secret_file:
        try:
            keys += Path(args.secret_file).read_text(encoding="utf-8").split()
        except OSError as exc:
            raise ConfigurationError(f"cannot read {args.secret_file}: {exc.strerror}") from exc
    if not keys and os.environ.get("MTLS_HOOKS_SECRET"):
        keys = os.environ["MTLS_HOOKS_SECRET"].split()
    if not keys:
        raise ConfigurationError(
            "no signing key: give --secret-env VAR, --secret-file FILE or $MTLS_HOOKS_SECRET"
        )
    return keys


def _payload(args: argparse.Namespace) -> object:
    text: str = "{}" if args.data is None else args.data
    source = "--data"
    if text.startswith("@"):
        source = text[1:]
        try:
            text = Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"cannot read {source}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{source} is not JSON: {exc}") from exc
    # Without --type the document is sent byte for byte as given.
    return data if args.event_type else text.encode("utf-8")


def run(args: argparse.Namespace) -> int:
    """Send one webhook; print the result and attempts. Returns the exit status.

    Raises:
        ConfigurationError: missing or unreadable keys, files or JSON.
        DeliveryError: the delivery failed (the dispatcher prints it as one line).
    """
    if args.cert and args.pkcs12:
        raise ConfigurationError("give --cert/--key or --pkcs12, not both")
    if args.file and (args.data is not None or args.webhook_id):
        raise ConfigurationError("--file sends its own lines: drop --data and --id")
    if args.concurrency < 1:
        raise ConfigurationError("--concurrency must be >= 1")
    password: str | None = None
    if args.key_password_env:
        password = _env(args.key_password_env, "passphrase")
    elif args.key_password_file:
        password = _first_line(args.key_password_file, "passphrase")
    policy = RetryPolicy.interactive().replace(
        stop=stop_after_attempt(args.max_attempts),
        deadline_s=args.deadline,
        attempt_timeout_s=args.timeout,
    )
    payload = None if args.file else _payload(args)
    with WebhookSender(
        signing_keys=_signing_keys(args),
        ca_file=args.ca,
        certfile=args.cert,
        keyfile=args.key,
        pkcs12_file=args.pkcs12,
        key_password=password,
        pins=args.pins,
        http2=args.http2,
        retry=policy,
        max_connections=args.concurrency if args.file else 1,
    ) as sender:
        if args.file:
            summary = send_file(
                sender,
                args.url,
                args.file,
                event_type=args.event_type,
                concurrency=args.concurrency,
                skip_bad_lines=args.skip_bad_lines,
            )
            return 0 if summary.failed == 0 else 1
        # A DeliveryError propagates: the dispatcher prints it as one line and exits 1.
        result = sender.send(
            args.url, payload, event_type=args.event_type, webhook_id=args.webhook_id
        )
    print(
        f"delivered {result.webhook_id} to {redact_url(result.url)}: {result.status_code} after "
        f"{len(result.attempts)} attempt(s) in {result.elapsed_s:.2f} s"
    )
    for attempt in result.attempts:
        print(f"  {attempt}")
    return 0
