"""``mtls-hooks deliver``: run a delivery worker until SIGTERM or SIGINT.

Run as many as the load needs, on one machine (SQLite) or many (PostgreSQL): each claims its
own messages. SIGTERM stops claiming, lets deliveries in flight finish for the grace period,
puts the rest back in the queue and exits 0.

``--metrics-bind HOST:PORT`` serves Prometheus metrics (attempts, deliveries, queue depth,
client certificate expiry) from this process; the expiry alarm logs a warning or an error
when a client certificate an endpoint presents is close to its end (``--expiry-*-days``).
"""

from __future__ import annotations

import argparse
from typing import Any

from mtls_hooks.cli._outbox import store_argument
from mtls_hooks.cli._workers import (
    add_loop_arguments,
    loop_options,
    run_until_signal,
    setup_logging,
)

__all__ = ["add_parser", "run"]

_EPILOG = """\
examples:
  mtls-hooks deliver --store sqlite:////var/lib/app/outbox.sqlite3 --concurrency 16
  MTLS_HOOKS_OUTBOX_STORE=postgresql://app@db/app mtls-hooks deliver --concurrency 32
  mtls-hooks deliver --store sqlite:///outbox.sqlite3 --metrics-bind 127.0.0.1:9464

Exit status: 0 after a clean stop (SIGTERM, SIGINT); 1 on a configuration or store error.
"""


def add_parser(subparsers: Any) -> None:
    """Register the ``deliver`` subcommand on the dispatcher's subparsers."""
    parser = subparsers.add_parser(
        "deliver",
        help="deliver outbox messages (a worker; run one or more)",
        description="Claim due outbox messages and deliver them over mTLS until stopped.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    store_argument(parser)
    add_loop_arguments(parser, concurrency=16, lease_s=60.0, what="deliveries")
    observe = parser.add_argument_group("metrics and alarms")
    observe.add_argument(
        "--expiry-warn-days",
        type=float,
        default=30.0,
        metavar="D",
        help="warn when a client certificate expires within D days (default 30)",
    )
    observe.add_argument(
        "--expiry-error-days",
        type=float,
        default=7.0,
        metavar="D",
        help="log an error within D days (default 7)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run one worker until a signal stops it.

    Returns:
        0 after a clean stop.

    Raises:
        ConfigurationError: a bad store URL, number or log level.
        StoreUnavailableError: the store cannot be reached at start.
    """
    from mtls_hooks.outbox._worker import DeliveryWorker

    setup_logging(args.log_level)
    worker = DeliveryWorker(
        args.store,
        expiry_warn_days=args.expiry_warn_days,
        expiry_error_days=args.expiry_error_days,
        **loop_options(args),
    )

    async def main() -> None:
        counts = await worker.run()
        print(
            f"mtls-hooks deliver: stopped: {counts.delivered} delivered, {counts.retried} "
            f"retried, {counts.failed} failed, {counts.released} released",
            flush=True,
        )

    run_until_signal("deliver", worker, args.metrics_bind, main)
    return 0
