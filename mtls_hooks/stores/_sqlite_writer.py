"""Group commit for one process's writes to a SQLite file: one transaction per event-loop turn.

A SQLite write transaction has a fixed cost beside its statements: taking the file's write
lock, appending the changed pages to the WAL (a leaf page per table and index, even for one
row), updating the WAL index, and, when another process wrote since, discarding the page
cache. Operations submitted during one event-loop turn (the requests that reached their
claim or their completion in that turn) therefore run together in the next turn, in one
``BEGIN IMMEDIATE … COMMIT``, and each caller awaits its own result. A batch of one runs
without ``BEGIN``/``COMMIT`` (autocommit: each statement is its own transaction).

Measured (``bench/bench_dedupe_sqlite.py``, 2 cores shared with other work): running the
first operation of each turn at once, or batching only when another process holds the lock,
cost as much CPU per request with one worker and more with two (more lock collisions, each
a wait on the thread); always batching cost the least with two workers.

Where a batch runs:

* ``inline`` (``synchronous=NORMAL``): on the event loop, on a connection that never waits
  for a lock (``busy_timeout`` 0): a commit without fsync takes tens of microseconds, less
  than a hop to a thread and back. When another process holds the write lock (it does for
  tens of microseconds per commit), the batch is tried again on the loop: in the next few
  turns, then after waits of 50 µs doubling up to 1 ms, taking in what was submitted
  meanwhile, until it commits or ``busy_timeout`` has passed (then it fails with SQLite's
  busy error). Not SQLite's own busy wait on the thread: it sleeps 1 ms, then 2, 5, 10 ms,
  while one batch at a time means every request of this process waits behind it; with two
  workers on one file that halved their throughput (``--workers 2`` ÷ 1: 1.07, against 1.63
  for two workers with memory stores).
* otherwise (``synchronous=FULL``): always on the writer thread, since each commit fsyncs
  the WAL; operations submitted meanwhile form the next batch (one fsync per batch).

One batch is in flight at a time, so each connection is used by one thread at a time. A
caller only submits an operation on an id after the previous one on that id returned, so
batches never need ordering between them.

A caller cancelled while it waits (its request went away) cancels its future. An operation
not yet run is then dropped; one already on the writer thread runs, and its result goes to
the ``orphaned`` callback given with it (to undo a claim nobody will settle), if any.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

__all__ = ["BUSY_CODES", "BatchWriter", "Op", "run_batch"]

Op = Callable[[sqlite3.Connection], Any]
_T = TypeVar("_T")
# An operation, the future its caller awaits, and what gets the result if that caller is gone.
_Item = tuple[Op, "asyncio.Future[Any]", "Callable[[Any], None] | None"]
BUSY_CODES: Final = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
# A bound on one transaction: a burst beyond it is split over the next turns.
_MAX_BATCH: Final = 256
# Event-loop turns a batch retries a held write lock, before it retries on timers.
_BUSY_TURNS: Final = 8
# 50 µs doubling to 1 ms. On a busy loop (the case that matters) a short timer fires at the
# next loop iteration, woken by I/O; on an idle one asyncio's epoll rounds it up to 1 ms and
# uvloop down to 0, so the cap of 1 ms keeps a long-held lock from spinning a core.
_BUSY_FIRST_WAIT_S: Final = 0.00005
_BUSY_MAX_WAIT_S: Final = 0.001


def _is_busy(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode in BUSY_CODES


def run_batch(conn: sqlite3.Connection, ops: list[Op]) -> list[Any]:
    """Run ``ops`` in one write transaction on ``conn`` (autocommit mode); all or nothing.

    Raises:
        sqlite3.Error: any failure, after the transaction was rolled back.
    """
    if len(ops) == 1:
        # Autocommit saves two statements. An operation of two statements (a claim that
        # then reads the row) must be correct that way too; a failed one changed nothing.
        return [ops[0](conn)]
    conn.execute("BEGIN IMMEDIATE")
    try:
        results = [op(conn) for op in ops]
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return results


class BatchWriter:
    """Runs submitted operations in shared transactions; see the module docstring.

    Attributes:
        transactions: committed (or failed) transactions so far; with ``operations``, the
            mean batch size.
        operations: operations run so far.
    """

    def __init__(
        self,
        fast: sqlite3.Connection,
        slow: sqlite3.Connection,
        executor: ThreadPoolExecutor,
        *,
        inline: bool,
        on_commit: Callable[[int], None],
        busy_timeout_s: float = 5.0,
    ) -> None:
        """Use ``fast`` (never waits for a lock) on the loop and ``slow`` on ``executor``.

        Args:
            fast: the event loop's connection, ``busy_timeout`` 0.
            slow: the writer thread's connection, with a ``busy_timeout``.
            executor: one thread; also used by the store's maintenance.
            inline: run batches on the loop first (False: always on the thread).
            on_commit: called on the loop with the batch size after each committed batch.
            busy_timeout_s: how long an inline batch retries another process's write lock.
        """
        self._fast = fast
        self._slow = slow
        self._executor = executor
        self._inline = inline
        self._on_commit = on_commit
        self._pending: list[_Item] = []
        self._scheduled = False  # a flush is queued on the loop, or a batch is on the thread
        self._busy_turns = 0
        self._busy_since: float | None = None
        self._busy_wait_s = _BUSY_FIRST_WAIT_S
        self._busy_timeout_s = busy_timeout_s
        self._idle: asyncio.Event | None = None
        self.transactions = 0
        self.operations = 0

    def submit(
        self,
        op: Callable[[sqlite3.Connection], _T],
        orphaned: Callable[[_T], None] | None = None,
    ) -> asyncio.Future[_T]:
        """Queue ``op`` for the next batch; the future gets its result or its exception.

        ``orphaned`` gets the result instead when the future was cancelled after ``op`` had
        started (on the writer thread); an ``op`` whose future is cancelled before never runs.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._pending.append((op, future, orphaned))
        if not self._scheduled:
            self._scheduled = True
            # call_soon: the callbacks already queued for this turn (other requests reaching
            # their claim) run first, and submit into the same batch.
            loop.call_soon(self._flush, loop)
        return future

    def _take(self) -> list[_Item]:
        batch, rest = self._pending[:_MAX_BATCH], self._pending[_MAX_BATCH:]
        self._pending = rest
        # A caller cancelled while waiting (its request went away) has nothing to run for.
        return [item for item in batch if not item[1].cancelled()]

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._take()
        if not batch:
            self._next(loop)
            return
        if self._inline:
            try:
                results = run_batch(self._fast, [item[0] for item in batch])
            except sqlite3.Error as exc:
                if not _is_busy(exc):
                    self._settle(loop, batch, None, exc)
                    return
                if self._retry_busy(loop):
                    # Another process commits now, which takes tens of microseconds: try
                    # again after the loop's other ready work, then after short waits,
                    # with what is submitted meanwhile (see the module docstring).
                    self._pending[:0] = batch
                    return
                self._settle(loop, batch, None, exc)  # held for busy_timeout_s: give up
                return
            else:
                self._busy_turns = 0
                self._busy_since = None
                self._settle(loop, batch, results, None)
                return
        ops = [item[0] for item in batch]
        try:
            done = self._executor.submit(run_batch, self._slow, ops)
        except RuntimeError as exc:  # the store closed meanwhile: its thread is gone
            self._settle(loop, batch, None, exc)
            return
        done.add_done_callback(
            lambda finished: loop.call_soon_threadsafe(
                self._settle_from_thread, loop, batch, finished
            )
        )

    def _retry_busy(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Schedule the next try of a batch that met a held write lock; False when the lock
        has been held for ``busy_timeout_s`` since the first try."""
        now = loop.time()
        if self._busy_since is None:
            self._busy_since = now
            self._busy_turns = 0
            self._busy_wait_s = _BUSY_FIRST_WAIT_S
        elif now - self._busy_since >= self._busy_timeout_s:
            self._busy_since = None
            self._busy_turns = 0
            return False
        if self._busy_turns < _BUSY_TURNS:
            self._busy_turns += 1
            loop.call_soon(self._flush, loop)
        else:
            loop.call_later(self._busy_wait_s, self._flush, loop)
            self._busy_wait_s = min(2 * self._busy_wait_s, _BUSY_MAX_WAIT_S)
        return True

    def _settle_from_thread(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[_Item],
        finished: Any,
    ) -> None:
        exc = finished.exception()
        self._settle(loop, batch, None if exc else finished.result(), exc)

    def _settle(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[_Item],
        results: list[Any] | None,
        exc: BaseException | None,
    ) -> None:
        self.transactions += 1
        self.operations += len(batch)
        if results is not None:
            for (_, future, orphaned), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
                elif orphaned is not None:  # cancelled while its batch was on the thread
                    orphaned(result)
            self._on_commit(len(batch))
        else:
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(exc or RuntimeError("batch failed"))
        self._next(loop)

    def _next(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._pending:
            loop.call_soon(self._flush, loop)  # arrived while this batch ran
            return
        self._scheduled = False
        if self._idle is not None:
            self._idle.set()

    async def drain(self) -> None:
        """Wait until every submitted operation has run."""
        while self._scheduled:
            self._idle = asyncio.Event()
            await self._idle.wait()

    def fail_pending(self, exc: BaseException) -> None:
        """Fail every queued operation (the store is closing without a loop to run them)."""
        pending, self._pending = self._pending, []
        for _, future, _ in pending:
            if not future.done():
                future.get_loop().call_soon_threadsafe(_fail, future, exc)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
