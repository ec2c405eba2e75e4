"""``mtls-hooks outbox``: operate the outbox: status, dead letter, replay, purge, endpoints.

Every verb takes ``--store URL`` (or ``$MTLS_HOOKS_OUTBOX_STORE``). Output never shows a key,
a passphrase or a URL's password: endpoint records hold file paths and variable names only.
The five verbs it shares with ``mtls-hooks inbox`` live in :mod:`mtls_hooks.cli._queue_verbs`;
``endpoint`` is the outbox's own.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Final

from mtls_hooks.cli._queue_verbs import QueueCommand

if TYPE_CHECKING:
    from mtls_hooks.outbox._outbox import Outbox

__all__ = ["OUTBOX", "STORE_ENV", "add_parser", "run", "store_argument"]

STORE_ENV: Final = "MTLS_HOOKS_OUTBOX_STORE"


def _open_outbox(url: str) -> Outbox:
    from mtls_hooks.outbox._outbox import Outbox

    return Outbox(url)


#: The outbox's operator verbs: messages to deliver, by endpoint.
OUTBOX: Final = QueueCommand(
    name="outbox",
    noun="message",
    article="a",
    store_env=STORE_ENV,
    open_view=_open_outbox,
    purge_help="delete delivered and failed messages",
)


_EXAMPLE_ENDPOINT = """\
examples:
  mtls-hooks outbox --store sqlite:///outbox.sqlite3 endpoint add billing \\
      https://billing.example:8443/hooks --cert client.pem --key client-key.pem \\
      --ca receiver-ca.pem --pin sha256/AAAA...= --signing-key file:/etc/app/whsec.txt
"""


def store_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--store URL``, defaulting to ``$MTLS_HOOKS_OUTBOX_STORE``."""
    OUTBOX.store_argument(parser)


def add_parser(subparsers: Any) -> None:
    """Register the ``outbox`` subcommand and its verbs."""
    verbs = OUTBOX.add_parser(
        subparsers,
        run=run,
        help="operate the outbox: status, dead letter, replay, purge, endpoints",
        description="Inspect and operate the durable outbox.",
        epilog=_EXAMPLE_ENDPOINT + OUTBOX.examples(),
    )
    endpoint = verbs.add_parser("endpoint", help="manage endpoint records")
    actions = endpoint.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="create or replace an endpoint")
    add.add_argument("name", metavar="NAME")
    add.add_argument("url", metavar="URL")
    add.add_argument("--cert", metavar="PEM", help="client certificate chain file")
    add.add_argument("--key", metavar="PEM", help="client private key file")
    add.add_argument("--key-password-env", metavar="VAR", help="variable holding its passphrase")
    add.add_argument("--ca", metavar="PEM", help="CA bundle for the receiver (default: system)")
    add.add_argument(
        "--signing-key",
        dest="signing_keys",
        action="append",
        default=[],
        metavar="REF",
        help="file:/path (one key per line) or env:NAME (repeatable)",
    )
    add.add_argument("--pin", dest="pins", action="append", default=[], metavar="PIN")
    add.add_argument("--max-attempts", type=int, metavar="N")
    add.add_argument("--initial-wait-s", type=float, metavar="S")
    add.add_argument("--max-wait-s", type=float, metavar="S")
    add.add_argument("--deadline-s", type=float, metavar="S")
    add.add_argument("--attempt-timeout-s", type=float, metavar="S")
    add.add_argument("--rate-limit", type=float, metavar="PER_S", help="deliveries per second")
    add.add_argument("--burst", type=float, default=1.0, metavar="N")
    add.add_argument("--fifo", action="store_true", help="deliver in enqueue order")
    add.add_argument(
        "--breaker-window-s", type=float, metavar="S", help="disable after S of failures"
    )
    add.add_argument("--disabled", action="store_true", help="create it disabled")
    actions.add_parser("list", help="every endpoint")
    disable = actions.add_parser("disable", help="stop delivering to an endpoint")
    disable.add_argument("name", metavar="NAME")
    disable.add_argument("--reason", default="disabled by an operator")
    enable = actions.add_parser("enable", help="resume delivering (resets its breaker)")
    enable.add_argument("name", metavar="NAME")


def run(args: argparse.Namespace) -> int:
    """Run one verb against the store.

    Returns:
        0 on success.

    Raises:
        ConfigurationError: no store, a malformed URL, an unknown endpoint or message.
        StoreUnavailableError: the store cannot be reached.
    """
    return OUTBOX.run(args, {"endpoint": _endpoint})


def _endpoint(outbox: Outbox, args: argparse.Namespace) -> int:
    from mtls_hooks.outbox._endpoint import Endpoint, RetrySettings
    from mtls_hooks.sender._results import redact_url

    if args.action == "add":
        retry = {
            "max_attempts": args.max_attempts,
            "initial_wait_s": args.initial_wait_s,
            "max_wait_s": args.max_wait_s,
            "deadline_s": args.deadline_s,
            "attempt_timeout_s": args.attempt_timeout_s,
        }
        endpoint = Endpoint(
            name=args.name,
            url=args.url,
            ca_file=args.ca,
            cert_file=args.cert,
            key_file=args.key,
            key_password_env=args.key_password_env,
            signing_keys=tuple(args.signing_keys),
            pins=tuple(args.pins),
            retry=RetrySettings(**{k: v for k, v in retry.items() if v is not None}),
            rate_limit_per_s=args.rate_limit,
            rate_burst=args.burst,
            fifo=args.fifo,
            breaker_window_s=args.breaker_window_s,
        )
        outbox.add_endpoint(endpoint, enabled=not args.disabled)
        print(f"endpoint {endpoint.name} saved")
    elif args.action == "list":
        for status in outbox.endpoints():
            e = status.endpoint
            state = "enabled" if status.enabled else f"disabled ({status.disabled_reason})"
            extras = [f"keys={','.join(e.signing_keys)}", f"pins={len(e.pins)}"]
            if e.rate_limit_per_s is not None:
                extras.append(f"rate={e.rate_limit_per_s:g}/s")
            if e.fifo:
                extras.append("fifo")
            print(f"{e.name}  {redact_url(e.url)}  {state}  {' '.join(extras)}")
    elif args.action == "disable":
        outbox.disable(args.name, reason=args.reason)
        print(f"endpoint {args.name} disabled")
    else:
        outbox.enable(args.name)
        print(f"endpoint {args.name} enabled")
    return 0
