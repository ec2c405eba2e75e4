"""The operator's verbs of a durable queue: ``status`` (``--watch``), ``list``, ``show``,
``retry`` and ``purge``, written once for ``mtls-hooks outbox`` and ``mtls-hooks inbox``.

Both are the queue engine seen through a facade with the same five methods
(:class:`~mtls_hooks.outbox.Outbox`, :class:`~mtls_hooks.inbox.Inbox`). A
:class:`QueueCommand` holds what differs between them: the command's name (and the title of
``status``), the noun of one job ("message", "event"), the store's environment variable, how
the facade is opened, what ``purge`` warns about, and what ``list`` and ``show`` add for one
job. Output never shows a job's payload: only its size.
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeVar

from mtls_hooks.core._errors import ConfigurationError

if TYPE_CHECKING:
    from mtls_hooks.queue._protocol import AttemptRecord, Job, JobState, QueueStats

__all__ = ["QueueCommand", "QueueOperations", "parse_duration_s", "status_lines"]

_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT_S: Final = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class QueueOperations(Protocol):
    """The operator's methods that :class:`~mtls_hooks.outbox.Outbox` and
    :class:`~mtls_hooks.inbox.Inbox` share."""

    def status(self) -> QueueStats:
        """Counts by state and endpoint, and the age of the oldest due job."""
        ...

    def messages(
        self, *, state: JobState | None = None, endpoint: str | None = None, limit: int = 100
    ) -> list[Job]:
        """Jobs, oldest first (``state=JobState.FAILED``: the dead letter)."""
        ...

    def show(self, job_id: str, /) -> tuple[Job, list[AttemptRecord]]:
        """One job and its attempts; raises ``ConfigurationError`` for an unknown id."""
        ...

    def retry(self, job_ids: Sequence[str], /, *, endpoint: str | None, all_failed: bool) -> int:
        """Requeue dead-lettered jobs (ids, an endpoint's, or all); returns how many."""
        ...

    def purge(self, *, older_than_s: float) -> int:
        """Delete finished jobs last updated that long ago; returns how many."""
        ...

    def close(self) -> None:
        """Release the store if the facade opened it."""
        ...


ViewT = TypeVar("ViewT", bound=QueueOperations)


def _emit(line: str) -> None:
    """Print one line of stored text: control and other unprintable characters escaped.

    Event types, ids, subjects, error texts and handler messages come from senders,
    receivers and handlers; printed raw, an ESC sequence or a newline in one could rewrite
    the operator's terminal or forge a line of output.
    """
    print("".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in line))


def parse_duration_s(text: str) -> float:
    """``90``, ``30s``, ``15m``, ``12h``, ``7d`` in seconds.

    Raises:
        ConfigurationError: anything else.
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ConfigurationError(f"duration must look like 30s, 15m, 12h or 7d, got {text!r}")
    return float(match[1]) * _UNIT_S[match[2]]


def _when(epoch_s: float) -> str:
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_lines(stats: QueueStats, noun: str) -> list[str]:
    """``status``'s plain text: counts by state, by endpoint, the oldest due ``noun``."""
    lines = ["  ".join(f"{state} {count}" for state, count in stats.by_state.items())]
    for name, counts in sorted(stats.by_target.items()):
        shown = ", ".join(f"{state} {count}" for state, count in sorted(counts.items()))
        lines.append(f"endpoint {name}: {shown}")
    oldest = stats.oldest_due_age_s
    lines.append(f"oldest due {noun}: " + ("none" if oldest is None else f"{oldest:.1f} s"))
    return lines


def _no_label(job: Job) -> str | None:
    return None


def _no_details(job: Job) -> list[str]:
    return []


@dataclass(frozen=True, slots=True)
class QueueCommand(Generic[ViewT]):
    """One queue's operator command: what differs between ``outbox`` and ``inbox``.

    Attributes:
        name: the subcommand, and the title of ``status --watch``.
        noun: one job in the operator's words ("message", "event").
        article: the noun's indefinite article ("a", "an").
        store_env: the variable ``--store`` defaults to.
        open_view: opens the facade on a store URL (raising our errors only).
        purge_help: ``purge`` in the list of verbs.
        purge_note: ``purge --help``'s description: what purging costs, if anything.
        list_label: a column ``list`` shows after the job id, if any.
        show_details: lines ``show`` prints after the event type.
    """

    name: str
    noun: str
    article: str
    store_env: str
    open_view: Callable[[str], ViewT]
    purge_help: str
    purge_note: str | None = None
    list_label: Callable[[Job], str | None] = _no_label
    show_details: Callable[[Job], list[str]] = _no_details

    # -- the parser ------------------------------------------------------------------------

    def store_argument(self, parser: argparse.ArgumentParser) -> None:
        """Add ``--store URL``, defaulting to the command's environment variable."""
        parser.add_argument(
            "--store",
            default=os.environ.get(self.store_env),
            metavar="URL",
            help=f"sqlite:///path or postgresql://... (default ${self.store_env})",
        )

    def add_parser(
        self,
        subparsers: Any,
        *,
        run: Callable[[argparse.Namespace], int],
        help: str,
        description: str,
        epilog: str,
    ) -> Any:
        """Register the command, run by ``run``, with ``--store`` and the five verbs; returns
        its verbs' subparsers, for verbs of its own (the outbox's ``endpoint``)."""
        parser = subparsers.add_parser(
            self.name,
            help=help,
            description=description,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        self.store_argument(parser)
        verbs = parser.add_subparsers(dest="verb", required=True)
        noun, nouns = self.noun, f"{self.noun}s"
        status = verbs.add_parser("status", help=f"counts by state and endpoint, oldest due {noun}")
        status.add_argument(
            "--watch", action="store_true", help="refresh in place on a terminal (until Ctrl-C)"
        )
        status.add_argument(
            "--interval", type=float, default=2.0, metavar="S", help="--watch refresh (default 2)"
        )
        status.add_argument("--count", type=int, metavar="N", help="--watch: stop after N readings")
        listing = verbs.add_parser("list", help=f"list {nouns} (--failed: the dead letter)")
        listing.add_argument("--failed", action="store_true", help=f"only dead-lettered {nouns}")
        listing.add_argument("--endpoint", metavar="NAME")
        listing.add_argument("--limit", type=int, default=100, metavar="N")
        show = verbs.add_parser("show", help=f"{self.article} {noun} and its attempt history")
        show.add_argument("message_id", metavar="ID")
        retry = verbs.add_parser("retry", help=f"replay dead-lettered {nouns}")
        retry.add_argument("message_ids", nargs="*", metavar="ID")
        retry.add_argument("--endpoint", metavar="NAME", help=f"every failed {noun} of NAME")
        retry.add_argument("--all-failed", action="store_true", help=f"every failed {noun}")
        purge = verbs.add_parser("purge", help=self.purge_help, description=self.purge_note)
        purge.add_argument("--older-than", required=True, metavar="AGE", help="e.g. 7d, 12h, 90m")
        parser.set_defaults(run=run)
        return verbs

    def examples(self) -> str:
        """The five verbs' lines of the command's ``examples:`` epilog."""
        verbs = ["status", "status --watch --interval 2", "list --failed", "show msg_2x8...",
                 "retry --all-failed", "purge --older-than 7d"]  # fmt: skip
        return "".join(f"  mtls-hooks {self.name} {verb}\n" for verb in verbs)

    # -- running ---------------------------------------------------------------------------

    def run(
        self,
        args: argparse.Namespace,
        own_verbs: Mapping[str, Callable[[ViewT, argparse.Namespace], int]] | None = None,
    ) -> int:
        """Open the facade on ``--store``, run the verb (one of the five, or one of
        ``own_verbs``), close the facade.

        Returns:
            0 on success.

        Raises:
            ConfigurationError: no store, a malformed URL, an unknown id, a bad duration or
                ``--watch`` setting, or a ``retry`` without exactly one choice.
            StoreUnavailableError: the store cannot be reached.
        """
        if not args.store:
            raise ConfigurationError(f"no store: pass --store URL or set {self.store_env}")
        verbs: dict[str, Callable[[ViewT, argparse.Namespace], int]] = {
            "status": self._status,
            "list": self._list,
            "show": self._show,
            "retry": self._retry,
            "purge": self._purge,
            **(own_verbs or {}),
        }
        view = self.open_view(args.store)
        try:
            return verbs[args.verb](view, args)
        finally:
            view.close()

    def _status(self, view: ViewT, args: argparse.Namespace) -> int:
        if args.watch:
            return self._watch(view, interval_s=args.interval, count=args.count)
        print("\n".join(status_lines(view.status(), self.noun)))
        return 0

    def _watch(self, view: ViewT, *, interval_s: float, count: int | None) -> int:
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
                        live.update(self._status_table(view.status(), interval_s), refresh=True)
            else:
                for n in readings:
                    if n:
                        time.sleep(interval_s)
                    lines = [f"--- {self.name} status at {_when(time.time())}"]
                    print("\n".join(lines + status_lines(view.status(), self.noun)), flush=True)
        return 0

    def _status_table(self, stats: QueueStats, interval_s: float) -> Any:
        from rich.table import Table

        states = list(stats.by_state)
        oldest = stats.oldest_due_age_s
        due = "none" if oldest is None else f"{oldest:.1f} s"
        table = Table(
            title=f"{self.name} status at {_when(time.time())}",
            caption=f"oldest due {self.noun}: {due}\nevery {interval_s:g} s; Ctrl-C ends",
        )
        table.add_column("endpoint")
        for state in states:
            table.add_column(state, justify="right")
        table.add_row("all", *(str(stats.by_state[state]) for state in states), style="bold")
        for name, counts in sorted(stats.by_target.items()):
            table.add_row(name, *(str(counts.get(state, 0)) for state in states))
        return table

    def _list(self, view: ViewT, args: argparse.Namespace) -> int:
        from mtls_hooks.queue._protocol import JobState

        state = JobState.FAILED if args.failed else None
        for job in view.messages(state=state, endpoint=args.endpoint, limit=args.limit):
            label = self.list_label(job)
            columns = [job.id, job.target] if label is None else [job.id, label, job.target]
            error = f"  {job.last_error}" if job.last_error else ""
            _emit(f"{'  '.join(columns)}  {job.state.value}  attempts={job.tries}{error}")
        return 0

    def _show(self, view: ViewT, args: argparse.Namespace) -> int:
        job, attempts = view.show(args.message_id)
        _emit(f"id {job.id}")
        _emit(f"endpoint {job.target}")
        _emit(f"state {job.state.value}")
        _emit(f"event_type {job.meta.get('event_type') or '-'}")
        for line in self.show_details(job):
            _emit(line)
        _emit(f"created {_when(job.created_at)}  next {_when(job.run_at)}")
        _emit(f"bytes {len(job.payload)}")
        if job.last_error:
            _emit(f"last_error {job.last_error}")
        for a in attempts:
            # An HTTP status for a delivery; a handler's run has only its exception, if any.
            outcome = a.status_code if a.status_code is not None else a.error or "-"
            detail = f"  {a.detail}" if a.detail else ""
            _emit(f"attempt #{a.number} {_when(a.started_at)} {a.outcome} {outcome} "
                  f"{a.latency_s * 1000:.1f} ms by {a.worker}{detail}")  # fmt: skip
        return 0

    def _retry(self, view: ViewT, args: argparse.Namespace) -> int:
        count = view.retry(args.message_ids, endpoint=args.endpoint, all_failed=args.all_failed)
        print(f"requeued {count} {self.noun}(s)")
        return 0

    def _purge(self, view: ViewT, args: argparse.Namespace) -> int:
        count = view.purge(older_than_s=parse_duration_s(args.older_than))
        print(f"purged {count} {self.noun}(s)")
        return 0
