"""``mtls-hooks process-inbox APP``: run an app's webhook handlers from its inbox.

The receiver (``mtls-hooks serve APP``) stores the events of endpoints in inbox mode and
answers 202; this worker runs their handlers, with retries, backoff and a dead letter. Run
it beside the server (set ``MTLS_HOOKS_INBOX_CONCURRENCY=0`` there so the server runs no
handlers itself), as many as the load needs, on one machine (SQLite) or several
(PostgreSQL): each claims its own events.

The app is imported and started as the server starts it (its ``before_serving`` functions
run, so handlers find their database pools), then SIGTERM stops claiming, lets running
handlers finish for the grace period, puts the rest back and exits 0. A ``kill -9`` loses
nothing: its events run again when their leases end.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any

from mtls_hooks.core._errors import ConfigurationError

__all__ = ["add_parser", "run"]

_EPILOG = """\
examples:
  MTLS_HOOKS_INBOX_URL=sqlite:////var/lib/hooks/inbox.sqlite3 mtls-hooks process-inbox app:app
  mtls-hooks process-inbox app:app --concurrency 32 --metrics-bind 127.0.0.1:9465

Exit status: 0 after a clean stop (SIGTERM, SIGINT); 1 on a configuration or store error.
"""


def add_parser(subparsers: Any) -> None:
    """Register the ``process-inbox`` subcommand on the dispatcher's subparsers."""
    parser = subparsers.add_parser(
        "process-inbox",
        help="run an app's webhook handlers from its inbox (a worker; run one or more)",
        description="Claim stored webhooks of APP's inbox and run their handlers until stopped.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("app", metavar="APP", help="the Quart app, as module:attribute")
    parser.add_argument(
        "--concurrency", type=int, metavar="N", help="handlers at once (default: the app's, 8)"
    )
    parser.add_argument("--batch", type=int, default=16, metavar="N", help="claimed per query")
    parser.add_argument(
        "--lease-s", type=float, metavar="S", help="claim lease (default: the app's, 60)"
    )
    parser.add_argument(
        "--poll-interval-s", type=float, default=1.0, metavar="S", help="idle poll (default 1)"
    )
    parser.add_argument(
        "--shutdown-grace-s", type=float, default=10.0, metavar="S", help="SIGTERM grace"
    )
    parser.add_argument("--log-level", default="INFO", metavar="LEVEL", help="INFO, WARNING, ...")
    parser.add_argument(
        "--metrics-bind",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default off; port 0 picks one)",
    )
    parser.add_argument(
        "--metrics-interval-s", type=float, default=5.0, metavar="S", help="depth refresh"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Import the app, start it, and run its inbox until a signal stops the worker.

    Returns:
        0 after a clean stop.

    Raises:
        ConfigurationError: an app that cannot be imported, has no receiver or no inbox,
            or a bad number or log level.
        StoreUnavailableError: the inbox cannot be reached at start.
    """
    from mtls_hooks.metrics._listener import MetricsListener
    from mtls_hooks.metrics._registry import enable_metrics
    from mtls_hooks.receiver._receiver import EXTENSION_KEY
    from mtls_hooks.serving._config import parse_bind
    from mtls_hooks.serving._workers import load_app

    level = logging.getLevelName(args.log_level.upper())
    if not isinstance(level, int):
        raise ConfigurationError(f"unknown log level {args.log_level!r}: DEBUG, INFO, WARNING, ...")
    logging.basicConfig(
        level=level, format="%(asctime)s [%(process)d] %(levelname)s %(name)s %(message)s"
    )
    # Like `serve`: APP is looked up from the working directory.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    app = load_app(args.app)
    receiver = getattr(app, "extensions", {}).get(EXTENSION_KEY)
    if receiver is None:
        raise ConfigurationError(f"{args.app} has no WebhookReceiver: nothing to process")
    options: dict[str, Any] = {
        "batch": args.batch,
        "poll_interval_s": args.poll_interval_s,
        "shutdown_grace_s": args.shutdown_grace_s,
        "metrics_interval_s": args.metrics_interval_s,
    }
    if args.concurrency is not None:
        options["concurrency"] = args.concurrency
    if args.lease_s is not None:
        options["lease_s"] = args.lease_s
    worker = receiver.inbox_worker(app, **options)
    listener = None
    if args.metrics_bind is not None:
        host, port = parse_bind(args.metrics_bind)
        listener = MetricsListener(host, port, enable_metrics().registry).start()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, worker.stop)
        # The app's before_serving functions (database pools, clients) run as in `serve`.
        await app.startup()
        try:
            print(
                f"mtls-hooks process-inbox: worker {worker.worker_id} on {worker.store!r}, "
                f"concurrency {worker.concurrency}",
                flush=True,
            )
            if listener is not None:
                where = args.metrics_bind.rpartition(":")[0]
                print(f"mtls-hooks process-inbox: metrics at http://{where}:{listener.port}"
                      "/metrics", flush=True)  # fmt: skip
            counts = await worker.run()
        finally:
            await app.shutdown()
        print(
            f"mtls-hooks process-inbox: stopped: {counts.handled} handled, {counts.unhandled} "
            f"unhandled, {counts.retried} retried, {counts.failed} failed, "
            f"{counts.released} released",
            flush=True,
        )

    try:
        asyncio.run(main())
    finally:
        if listener is not None:
            listener.stop()
    return 0
