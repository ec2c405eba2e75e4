"""``mtls-hooks send URL --file events.jsonl``: many events, bounded concurrency, progress.

One JSON document per line, sent byte for byte as its payload (or wrapped as ``data`` with
``--type``); blank lines are ignored. The whole file is checked before the first delivery,
so a malformed line either stops the run before anything is sent (the default) or, with
``--skip-bad-lines``, is reported with its line number and left out.

On a terminal a rich progress bar follows the deliveries; elsewhere (CI logs, pipes) a plain
line is printed at every tenth of the work. A summary table ends the run: delivered and
failed counts, the failures grouped by reason, the attempts and the elapsed time.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from mtls_hooks.core._errors import ConfigurationError, DeliveryError
from mtls_hooks.sender._results import DeliveryResult
from mtls_hooks.sender._sync import WebhookSender

__all__ = ["BadLine", "BulkSummary", "read_events", "send_file"]


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line of the events file that is not a JSON document."""

    number: int
    reason: str


@dataclass(slots=True)
class BulkSummary:
    """What a bulk send did."""

    delivered: int = 0
    failed: int = 0
    skipped: int = 0
    attempts: int = 0
    elapsed_s: float = 0.0
    failures: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def total(self) -> int:
        """Events sent (delivered or failed)."""
        return self.delivered + self.failed


def read_events(path: str, *, wrap: bool) -> tuple[list[tuple[int, Any]], list[BadLine]]:
    """Read and check every line: ``[(line number, payload)]`` and the bad lines.

    Args:
        path: the events file, UTF-8, one JSON document per line.
        wrap: payloads are parsed documents (to be wrapped by ``--type``); otherwise the
            line's own bytes, so that what is signed is exactly what the file holds.

    Raises:
        ConfigurationError: the file cannot be read.
    """
    events: list[tuple[int, Any]] = []
    bad: list[BadLine] = []
    try:
        handle = Path(path).open(encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from exc
    with handle:
        try:
            for number, line in enumerate(handle, start=1):
                text = line.strip()
                if not text:
                    continue
                try:
                    document = json.loads(text)
                except json.JSONDecodeError as exc:
                    bad.append(BadLine(number, f"not JSON: {exc.msg} at column {exc.colno}"))
                    continue
                events.append((number, document if wrap else text.encode("utf-8")))
        except UnicodeDecodeError as exc:
            raise ConfigurationError(f"{path} is not UTF-8 text") from exc
    return events, bad


def _reason(result: DeliveryResult) -> str:
    if result.error is None:
        return "delivered"
    status = result.status_code
    return f"{type(result.error).__name__}" + (f" {status}" if status is not None else "")


class _Progress:
    """A rich bar on a terminal, a plain line per tenth of the work elsewhere."""

    def __init__(self, total: int, stream: IO[str]) -> None:
        self.total = total
        self.stream = stream
        self.done = 0
        self._next_tenth = 1
        self._bar: Any = None
        self._task: Any = None
        if stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self._bar = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(file=stream),
                transient=True,
            )
            self._task = self._bar.add_task("sending", total=total)

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self, summary: BulkSummary) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1)
            return
        while self.total and self.done * 10 >= self._next_tenth * self.total:
            self._next_tenth += 1
            print(
                f"progress: {self.done}/{self.total} sent "
                f"({summary.delivered} delivered, {summary.failed} failed)",
                file=self.stream,
                flush=True,
            )


def _results(
    sender: WebhookSender,
    url: str,
    events: list[tuple[int, Any]],
    event_type: str | None,
    concurrency: int,
) -> Iterator[DeliveryResult]:
    def one(payload: Any) -> DeliveryResult:
        try:
            return sender.send(url, payload, event_type=event_type)
        except DeliveryError as exc:
            if not isinstance(exc.result, DeliveryResult):  # pragma: no cover - always set
                raise
            return exc.result

    with concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix="bulk") as pool:
        # At most 4 x concurrency events in flight: memory stays bounded for a long file.
        window = 4 * concurrency
        pending: set[concurrent.futures.Future[DeliveryResult]] = set()
        for _, payload in events:
            pending.add(pool.submit(one, payload))
            if len(pending) >= window:
                finished, pending = concurrent.futures.wait(
                    pending, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in finished:
                    yield future.result()
        for future in concurrent.futures.as_completed(pending):
            yield future.result()


def send_file(
    sender: WebhookSender,
    url: str,
    path: str,
    *,
    event_type: str | None,
    concurrency: int,
    skip_bad_lines: bool,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> BulkSummary:
    """Send every event of ``path`` to ``url`` and print progress and a summary table.

    Progress and malformed lines go to ``err`` (standard error by default), the summary
    table to ``out`` (standard output).

    Raises:
        ConfigurationError: unreadable file, a malformed line without ``skip_bad_lines``
            (nothing is sent then), or a concurrency below 1.
    """
    if concurrency < 1:
        raise ConfigurationError("--concurrency must be >= 1")
    out = sys.stdout if out is None else out  # looked up per call: tests and shells swap them
    err = sys.stderr if err is None else err
    events, bad = read_events(path, wrap=event_type is not None)
    for line in bad:
        print(f"{path}:{line.number}: {line.reason}", file=err)
    if bad and not skip_bad_lines:
        raise ConfigurationError(
            f"{len(bad)} malformed line(s) in {path}, first at line {bad[0].number}; "
            "nothing was sent (--skip-bad-lines sends the others)"
        )
    summary = BulkSummary(skipped=len(bad))
    started = time.monotonic()
    with _Progress(len(events), err) as progress:
        for result in _results(sender, url, events, event_type, concurrency):
            summary.attempts += len(result.attempts)
            if result.ok:
                summary.delivered += 1
            else:
                summary.failed += 1
                summary.failures[_reason(result)] += 1
            progress.advance(summary)
    summary.elapsed_s = time.monotonic() - started
    _print_summary(summary, out)
    return summary


def _print_summary(summary: BulkSummary, out: IO[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="bulk send", show_header=True)
    table.add_column("result")
    table.add_column("events", justify="right")
    table.add_row("delivered", str(summary.delivered))
    for reason, count in sorted(summary.failures.items()):
        table.add_row(f"failed: {reason}", str(count))
    if summary.skipped:
        table.add_row("skipped (malformed)", str(summary.skipped))
    table.add_row("attempts", str(summary.attempts))
    rate = summary.total / summary.elapsed_s if summary.elapsed_s > 0 else 0.0
    table.add_row("elapsed", f"{summary.elapsed_s:.2f} s ({rate:.0f}/s)")
    # A fixed width off a terminal keeps logs and tests stable.
    Console(file=out, width=None if out.isatty() else 80).print(table)
