"""``mtls-hooks outbox``: operate the outbox: status, dead letter, replay, purge, endpoints.

Every verb takes ``--store URL`` (or ``$MTLS_HOOKS_OUTBOX_STORE``). Output never shows a key,
a passphrase or a URL's password: endpoint records hold file paths and variable names only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import math
import os
import re
import time
from typing import Any, Final

from mtls_hooks.core._errors import ConfigurationError

__all__ = ["STORE_ENV", "add_parser", "parse_duration_s", "run", "status_lines", "store_argument"]

STORE_ENV: Final = "MTLS_HOOKS_OUTBOX_STORE"
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT_S: Final = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

_EPILOG = """\
examples:
  mtls-hooks outbox --store sqlite:///outbox.sqlite3 endpoint add billing \\
      https://billing.example:8443/hooks --cert client.pem --key client-key.pem \\
      --ca receiver-ca.pem --pin sha256/AAAA...= --signing-key file:/etc/app/whsec.txt
  mtls-hooks outbox status
  mtls-hooks outbox status --watch --interval 2
  mtls-hooks outbox list --failed
  mtls-hooks outbox show msg_2x8...
  mtls-hooks outbox retry --all-failed
  mtls-hooks outbox purge --older-than 7d
"""


def store_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--store URL``, defaulting to ``$MTLS_HOOKS_OUTBOX_STORE``."""
    parser.add_argument(
        "--store",
        default=os.environ.get(STORE_ENV),
        metavar="URL",
        help=f"sqlite:///path or postgresql://... (default ${STORE_ENV})",
    )


def parse_duration_s(text: str) -> float:
    """``90``, ``30s``, ``15m``, ``12h``, ``7d`` in seconds.

    Raises:
        ConfigurationError: anything else.
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ConfigurationError(f"duration must look like 30s, 15m, 12h or 7d, got {text!r}")
    return float(match[1]) * _UNIT_S[match[2]]


def add_parser(subparsers: Any) -> None:
    """Register the ``outbox`` subcommand and its verbs."""
    parser = subparsers.add_parser(
        "outbox",
        help="operate the outbox: status, dead letter, replay, purge, endpoints",
        description="Inspect and operate the durable outbox.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    store_argument(parser)
    verbs = parser.add_subparsers(dest="verb", required=True)
    status = verbs.add_parser("status", help="counts by state and endpoint, oldest due message")
    status.add_argument(
        "--watch", action="store_true", help="refresh in place on a terminal (until Ctrl-C)"
    )
    status.add_argument(
        "--interval", type=float, default=2.0, metavar="S", help="--watch refresh (default 2)"
    )
    status.add_argument("--count", type=int, metavar="N", help="--watch: stop after N readings")
    listing = verbs.add_parser("list", help="list messages (--failed: the dead letter)")
    listing.add_argument("--failed", action="store_true", help="only dead-lettered messages")
    listing.add_argument("--endpoint", metavar="NAME")
    listing.add_argument("--limit", type=int, default=100, metavar="N")
    show = verbs.add_parser("show", help="a message and its attempt history")
    show.add_argument("message_id", metavar="ID")
    retry = verbs.add_parser("retry", help="replay dead-lettered messages")
    retry.add_argument("message_ids", nargs="*", metavar="ID")
    retry.add_argument("--endpoint", metavar="NAME", help="every failed message of NAME")
    retry.add_argument("--all-failed", action="store_true", help="every failed message")
    purge = verbs.add_parser("purge", help="delete delivered and failed messages")
    purge.add_argument("--older-than", required=True, metavar="AGE", help="e.g. 7d, 12h, 90m")
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
    parser.set_defaults(run=run)


def _when(epoch_s: float) -> str:
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run(args: argparse.Namespace) -> int:
    """Run one verb against the store.

    Returns:
        0 on success.

    Raises:
        ConfigurationError: no store, a malformed URL, an unknown endpoint or message.
        StoreUnavailableError: the store cannot be reached.
    """
    from mtls_hooks.outbox._outbox import Outbox

    if not args.store:
        raise ConfigurationError(f"no store: pass --store URL or set {STORE_ENV}")
    with Outbox(args.store) as outbox:
        if args.verb == "endpoint":
            return _endpoint(outbox, args)
        return _VERBS[args.verb](outbox, args)


def _status(outbox: Any, args: argparse.Namespace) -> int:
    if args.watch:
        return _watch(outbox, interval_s=args.interval, count=args.count)
    print("\n".join(status_lines(outbox.status())))
    return 0


def status_lines(stats: Any) -> list[str]:
    """``status``'s plain text: counts by state, by endpoint, the oldest due message."""
    lines = ["  ".join(f"{state} {count}" for state, count in stats.by_state.items())]
    for name, counts in sorted(stats.by_target.items()):
        shown = ", ".join(f"{state} {count}" for state, count in sorted(counts.items()))
        lines.append(f"endpoint {name}: {shown}")
    oldest = stats.oldest_due_age_s
    lines.append("oldest due message: " + ("none" if oldest is None else f"{oldest:.1f} s"))
    return lines


def _watch(outbox: Any, *, interval_s: float, count: int | None) -> int:
    """``status --watch``: a table refreshed in place on a terminal (rich's ``Live``),
    plain timestamped snapshots elsewhere (logs, pipes), ``count`` readings at most."""
    if not math.isfinite(interval_s) or interval_s <= 0:
        raise ConfigurationError(
            f"--interval must be a positive number of seconds, got {interval_s:g}"
        )
    if count is not None and count < 1:
        raise ConfigurationError(f"--count must be at least 1, got {count}")
    from rich.console import Console

    console = Console()
    readings = itertools.count() if count is None else range(count)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a watch ends
        if console.is_terminal:
            from rich.live import Live

            with Live(console=console, auto_refresh=False) as live:
                for n in readings:
                    if n:
                        time.sleep(interval_s)
                    live.update(_status_table(outbox.status(), interval_s), refresh=True)
        else:
            for n in readings:
                if n:
                    time.sleep(interval_s)
                lines = [f"--- outbox status at {_when(time.time())}"]
                print("\n".join(lines + status_lines(outbox.status())), flush=True)
    return 0


def _status_table(stats: Any, interval_s: float) -> Any:
    from rich.table import Table

    states = list(stats.by_state)
    oldest = stats.oldest_due_age_s
    due = "none" if oldest is None else f"{oldest:.1f} s"
    table = Table(
        title=f"outbox status at {_when(time.time())}",
        caption=f"oldest due message: {due}\nevery {interval_s:g} s; Ctrl-C ends",
    )
    table.add_column("endpoint")
    for state in states:
        table.add_column(state, justify="right")
    table.add_row("all", *(str(stats.by_state[state]) for state in states), style="bold")
    for name, counts in sorted(stats.by_target.items()):
        table.add_row(name, *(str(counts.get(state, 0)) for state in states))
    return table


def _list(outbox: Any, args: argparse.Namespace) -> int:
    from mtls_hooks.queue._protocol import JobState

    state = JobState.FAILED if args.failed else None
    for job in outbox.messages(state=state, endpoint=args.endpoint, limit=args.limit):
        error = f"  {job.last_error}" if job.last_error else ""
        print(f"{job.id}  {job.target}  {job.state.value}  attempts={job.tries}{error}")
    return 0


def _show(outbox: Any, args: argparse.Namespace) -> int:
    job, attempts = outbox.show(args.message_id)
    print(f"id {job.id}")
    print(f"endpoint {job.target}")
    print(f"state {job.state.value}")
    print(f"event_type {job.meta.get('event_type') or '-'}")
    print(f"created {_when(job.created_at)}  next {_when(job.run_at)}")
    print(f"bytes {len(job.payload)}")
    if job.last_error:
        print(f"last_error {job.last_error}")
    for a in attempts:
        outcome = a.status_code if a.status_code is not None else a.error
        detail = f"  {a.detail}" if a.detail else ""
        print(f"attempt #{a.number} {_when(a.started_at)} {a.outcome} {outcome} "
              f"{a.latency_s * 1000:.1f} ms by {a.worker}{detail}")  # fmt: skip
    return 0


def _retry(outbox: Any, args: argparse.Namespace) -> int:
    count = outbox.retry(args.message_ids, endpoint=args.endpoint, all_failed=args.all_failed)
    print(f"requeued {count} message(s)")
    return 0


def _purge(outbox: Any, args: argparse.Namespace) -> int:
    count = outbox.purge(older_than_s=parse_duration_s(args.older_than))
    print(f"purged {count} message(s)")
    return 0


_VERBS = {"status": _status, "list": _list, "show": _show, "retry": _retry, "purge": _purge}


def _endpoint(outbox: Any, args: argparse.Namespace) -> int:
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
