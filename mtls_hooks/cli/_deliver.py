"""``mtls-hooks deliver``: run a delivery worker until SIGTERM or SIGINT.

Run as many as the load needs, on one machine (SQLite) or many (PostgreSQL): each claims its
own messages. SIGTERM stops claiming, lets deliveries in flight finish for the grace period,
puts the rest back in the queue and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

from mtls_hooks.cli._outbox import store_argument
from mtls_hooks.core._errors import ConfigurationError

__all__ = ["add_parser", "run"]

_EPILOG = """\
examples:
  mtls-hooks deliver --store sqlite:////var/lib/app/outbox.sqlite3 --concurrency 16
  MTLS_HOOKS_OUTBOX_STORE=postgresql://app@db/app mtls-hooks deliver --concurrency 32

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
    parser.add_argument("--concurrency", type=int, default=16, metavar="N", help="in flight")
    parser.add_argument("--batch", type=int, default=16, metavar="N", help="claimed per query")
    parser.add_argument(
        "--lease-s", type=float, default=60.0, metavar="S", help="claim lease (default 60)"
    )
    parser.add_argument(
        "--poll-interval-s", type=float, default=1.0, metavar="S", help="idle poll (default 1)"
    )
    parser.add_argument(
        "--shutdown-grace-s", type=float, default=10.0, metavar="S", help="SIGTERM grace"
    )
    parser.add_argument("--log-level", default="INFO", metavar="LEVEL", help="INFO, WARNING, ...")
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

    level = logging.getLevelName(args.log_level.upper())
    if not isinstance(level, int):
        raise ConfigurationError(f"unknown log level {args.log_level!r}: DEBUG, INFO, WARNING, ...")
    logging.basicConfig(
        level=level,
        format="%(asctime)s [%(process)d] %(levelname)s %(name)s %(message)s",
    )
    worker = DeliveryWorker(
        args.store,
        concurrency=args.concurrency,
        batch=args.batch,
        lease_s=args.lease_s,
        poll_interval_s=args.poll_interval_s,
        shutdown_grace_s=args.shutdown_grace_s,
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, worker.stop)
        print(
            f"mtls-hooks deliver: worker {worker.worker_id} on {worker.store!r}, "
            f"concurrency {worker.concurrency}",
            flush=True,
        )
        counts = await worker.run()
        print(
            f"mtls-hooks deliver: stopped: {counts.delivered} delivered, {counts.retried} "
            f"retried, {counts.failed} failed, {counts.released} released",
            flush=True,
        )

    asyncio.run(main())
    return 0
