"""What the queue workers' commands share: ``deliver`` (the outbox) and ``process-inbox``.

Their loop settings as flags, their log set-up, their metrics listener and the way they run
until SIGTERM or SIGINT, written once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from mtls_hooks.core._errors import ConfigurationError

__all__ = ["add_loop_arguments", "loop_options", "run_until_signal", "setup_logging"]


def add_loop_arguments(
    parser: argparse.ArgumentParser, *, concurrency: int | None, lease_s: float | None, what: str
) -> None:
    """Add the worker loop's flags; ``None`` defaults mean "the worker's own" (the app's)."""
    default = "the app's" if concurrency is None else str(concurrency)
    parser.add_argument(
        "--concurrency", type=int, default=concurrency, metavar="N",
        help=f"{what} at once (default {default})",
    )  # fmt: skip
    parser.add_argument("--batch", type=int, default=16, metavar="N", help="claimed per query")
    lease = "the app's" if lease_s is None else f"{lease_s:g}"
    parser.add_argument(
        "--lease-s", type=float, default=lease_s, metavar="S", help=f"claim lease (default {lease})"
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
        "--metrics-interval-s", type=float, default=5.0, metavar="S",
        help="queue depth refresh (default 5)",
    )  # fmt: skip


def loop_options(args: argparse.Namespace) -> dict[str, Any]:
    """The worker's keyword settings from the flags (those left unset are not passed)."""
    options = {
        "concurrency": args.concurrency,
        "batch": args.batch,
        "lease_s": args.lease_s,
        "poll_interval_s": args.poll_interval_s,
        "shutdown_grace_s": args.shutdown_grace_s,
        "metrics_interval_s": args.metrics_interval_s,
    }
    return {name: value for name, value in options.items() if value is not None}


def setup_logging(level_name: str) -> None:
    """Log to stderr with the process id, at ``level_name``.

    Raises:
        ConfigurationError: an unknown level name.
    """
    level = logging.getLevelName(level_name.upper())
    if not isinstance(level, int):
        raise ConfigurationError(f"unknown log level {level_name!r}: DEBUG, INFO, WARNING, ...")
    logging.basicConfig(
        level=level, format="%(asctime)s [%(process)d] %(levelname)s %(name)s %(message)s"
    )


def run_until_signal(
    command: str,
    worker: Any,
    metrics_bind: str | None,
    body: Callable[[], Awaitable[Any]],
) -> None:
    """Run ``body()`` (which runs ``worker``) until SIGTERM or SIGINT stop the worker.

    Prints ``mtls-hooks <command>: worker <id> on <store>, concurrency <n>`` first. With
    ``metrics_bind``, metrics are recorded and served from this process meanwhile; the next
    line, ``mtls-hooks <command>: metrics at http://…/metrics``, says where.
    """
    from mtls_hooks.metrics._listener import MetricsListener
    from mtls_hooks.metrics._registry import enable_metrics
    from mtls_hooks.serving._config import parse_bind

    listener = None
    if metrics_bind is not None:
        host, port = parse_bind(metrics_bind)
        # One process: values in memory, served from a thread of this process.
        listener = MetricsListener(host, port, enable_metrics().registry).start()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, worker.stop)
        print(
            f"mtls-hooks {command}: worker {worker.worker_id} on {worker.store!r}, "
            f"concurrency {worker.concurrency}",
            flush=True,
        )
        if listener is not None:
            where = metrics_bind.rpartition(":")[0] if metrics_bind else ""
            print(f"mtls-hooks {command}: metrics at http://{where}:{listener.port}/metrics",
                  flush=True)  # fmt: skip
        await body()

    try:
        asyncio.run(main())
    finally:
        if listener is not None:
            listener.stop()
