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
    observe = parser.add_argument_group("metrics and alarms")
    observe.add_argument(
        "--metrics-bind",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default off; port 0 picks one)",
    )
    observe.add_argument(
        "--metrics-interval-s",
        type=float,
        default=5.0,
        metavar="S",
        help="queue depth refresh (default 5)",
    )
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
    from mtls_hooks.metrics._listener import MetricsListener
    from mtls_hooks.metrics._registry import enable_metrics
    from mtls_hooks.outbox._worker import DeliveryWorker
    from mtls_hooks.serving._config import parse_bind

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
        metrics_interval_s=args.metrics_interval_s,
        expiry_warn_days=args.expiry_warn_days,
        expiry_error_days=args.expiry_error_days,
    )
    listener = None
    if args.metrics_bind is not None:
        host, port = parse_bind(args.metrics_bind)
        # One process: values in memory, served from a thread of this process.
        listener = MetricsListener(host, port, enable_metrics().registry).start()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, worker.stop)
        print(
            f"mtls-hooks deliver: worker {worker.worker_id} on {worker.store!r}, "
            f"concurrency {worker.concurrency}",
            flush=True,
        )
        if listener is not None:
            print(f"mtls-hooks deliver: metrics at http://{args.metrics_bind.rpartition(':')[0]}:"
                  f"{listener.port}/metrics", flush=True)  # fmt: skip
        counts = await worker.run()
        print(
            f"mtls-hooks deliver: stopped: {counts.delivered} delivered, {counts.retried} "
            f"retried, {counts.failed} failed, {counts.released} released",
            flush=True,
        )

    try:
        asyncio.run(main())
    finally:
        if listener is not None:
            listener.stop()
    return 0
