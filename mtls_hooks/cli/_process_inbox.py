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
import os
import sys
from typing import Any

from mtls_hooks.cli._workers import (
    add_loop_arguments,
    loop_options,
    run_until_signal,
    setup_logging,
)
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
    add_loop_arguments(parser, concurrency=None, lease_s=None, what="handlers")
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
    from mtls_hooks.receiver._receiver import EXTENSION_KEY
    from mtls_hooks.serving._workers import load_app

    setup_logging(args.log_level)
    # Like `serve`: APP is looked up from the working directory.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    app = load_app(args.app)
    receiver = getattr(app, "extensions", {}).get(EXTENSION_KEY)
    if receiver is None:
        raise ConfigurationError(f"{args.app} has no WebhookReceiver: nothing to process")
    worker = receiver.inbox_worker(app, **loop_options(args))

    async def main() -> None:
        # The app's before_serving functions (database pools, clients) run as in `serve`.
        await app.startup()
        try:
            counts = await worker.run()
        finally:
            await app.shutdown()
        print(
            f"mtls-hooks process-inbox: stopped: {counts.handled} handled, {counts.unhandled} "
            f"unhandled, {counts.retried} retried, {counts.failed} failed, "
            f"{counts.released} released",
            flush=True,
        )

    run_until_signal("process-inbox", worker, args.metrics_bind, main)
    return 0
