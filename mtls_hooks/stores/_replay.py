"""Webhook-id dedupe stores: run each message's handler once, however often it is delivered.

Senders retry the same ``webhook-id`` for days (Standard Webhooks, "Retry schedule": the
receiver must dedupe on it), and each retry is re-signed with a fresh timestamp, so the
timestamp tolerance alone stops only replays by a third party, never a sender's own retries.
A store therefore remembers ids for a *retention window* that covers the retry horizon
(Stripe retries for 3 days, Svix for about 28 hours): :data:`DEFAULT_RETENTION_S` is 7 days.

Every store follows one claim / complete / release protocol so that two concurrent deliveries
of one id run the handler once:

* :meth:`DedupeStore.claim` atomically takes an unseen (or expired) id and answers
  :attr:`ClaimState.CLAIMED`; for an id already done it answers :attr:`ClaimState.DONE`,
  for one another request holds, :attr:`ClaimState.IN_FLIGHT`.
* :meth:`DedupeStore.complete` marks the id done for the retention window after success.
* :meth:`DedupeStore.release` forgets a claim after a failure so the sender's retry runs again.

A claim is a *lease* of ``lease_s`` seconds: if the process dies mid-handler, the id becomes
claimable again once the lease ends. Handlers that may run longer than the lease must be
idempotent themselves (or acknowledge first and work afterwards, which is advised anyway).
"""

from __future__ import annotations

import asyncio
import enum
import math
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final, Protocol, TypeVar, runtime_checkable

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.queue._sqlite import open_wal
from mtls_hooks.stores._sqlite_writer import BatchWriter

__all__ = [
    "DEFAULT_LEASE_S",
    "DEFAULT_RETENTION_S",
    "ClaimState",
    "DedupeStore",
    "MemoryDedupeStore",
    "SQLiteDedupeStore",
]

DEFAULT_RETENTION_S: Final = 7 * 24 * 3600.0
DEFAULT_LEASE_S: Final = 120.0
DEFAULT_MAX_ENTRIES: Final = 100_000
# Every this many claims, sweep at most this many expired ids: bounded work per request.
_PURGE_BATCH: Final = 32


class ClaimState(enum.Enum):
    """The answer of :meth:`DedupeStore.claim`."""

    CLAIMED = "claimed"
    """The caller owns the id: run the handler, then ``complete`` or ``release`` it."""
    DONE = "done"
    """The id was processed within the retention window: acknowledge without running."""
    IN_FLIGHT = "in-flight"
    """Another request holds the id right now."""


@runtime_checkable
class DedupeStore(Protocol):
    """Where processed webhook ids are remembered. Keys are opaque strings."""

    async def claim(self, key: str) -> ClaimState:
        """Atomically claim ``key`` unless it is done or held by a live lease."""
        ...

    async def complete(self, key: str) -> None:
        """Mark a claimed ``key`` as processed for the retention window."""
        ...

    async def release(self, key: str) -> None:
        """Drop an unfinished claim on ``key`` so a later delivery can run it."""
        ...

    async def aclose(self) -> None:
        """Release the store's resources; the store is unusable afterwards."""
        ...


def _check_seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number of seconds")
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{name} must be finite and > 0, got {value!r}")
    return float(value)


def _check_windows(retention_s: float, lease_s: float) -> tuple[float, float]:
    retention_s = _check_seconds("retention_s", retention_s)
    lease_s = _check_seconds("lease_s", lease_s)
    if lease_s > retention_s:
        raise ConfigurationError("lease_s must not exceed retention_s")
    return retention_s, lease_s


class MemoryDedupeStore:
    """An in-process, bounded, TTL dedupe store: the fast default.

    State lives in one process: with several server workers, or across restarts, a retried
    id can run again. Use :class:`SQLiteDedupeStore` when that matters.

    When more than ``max_entries`` ids are live, the least recently written one is dropped
    early (counted in :attr:`evicted`): that weakens idempotency for very old retries, never
    replay protection, which the signature timestamp tolerance provides.
    """

    __slots__ = (
        "_claims",
        "_clock",
        "_entries",
        "evicted",
        "lease_s",
        "max_entries",
        "retention_s",
    )

    def __init__(
        self,
        *,
        retention_s: float = DEFAULT_RETENTION_S,
        lease_s: float = DEFAULT_LEASE_S,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create an empty store.

        Args:
            retention_s: how long a processed id is remembered.
            lease_s: how long a claim without ``complete``/``release`` blocks the id.
            max_entries: the bound on remembered ids.
            clock: monotonic seconds; injected by tests.

        Raises:
            ConfigurationError: a non-positive window or bound, or a lease above the retention.
        """
        self.retention_s, self.lease_s = _check_windows(retention_s, lease_s)
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigurationError("max_entries must be a positive integer")
        self.max_entries = max_entries
        self._clock = clock
        # key -> (done, expires_at), ordered by claim time: the front expires first (a lease is
        # shorter than the retention, so an expired lease further back is caught on lookup).
        self._entries: OrderedDict[str, tuple[bool, float]] = OrderedDict()
        self.evicted = 0
        self._claims = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _purge(self, now: float) -> None:
        entries = self._entries
        for _ in range(_PURGE_BATCH):
            if not entries:
                return
            oldest, (_, expires_at) = next(iter(entries.items()))
            if expires_at > now:
                return
            del entries[oldest]

    async def claim(self, key: str) -> ClaimState:
        """Claim ``key``; see :class:`DedupeStore`."""
        now = self._clock()
        entries = self._entries
        self._claims += 1
        if not self._claims % _PURGE_BATCH:
            # Amortised: one bounded sweep of the oldest ids every _PURGE_BATCH claims keeps
            # the table at its live size without paying a sweep on every request.
            self._purge(now)
        entry = entries.get(key)
        if entry is not None:
            if entry[1] > now:
                return ClaimState.DONE if entry[0] else ClaimState.IN_FLIGHT
            entries.move_to_end(key)  # an expired id reclaimed: it is the newest again
        entries[key] = (False, now + self.lease_s)
        if len(entries) > self.max_entries:
            entries.popitem(last=False)
            self.evicted += 1
        return ClaimState.CLAIMED

    async def complete(self, key: str) -> None:
        """Mark ``key`` done; see :class:`DedupeStore`."""
        # Kept at its claim position: the order stays by claim time, and a done id expires a
        # handler's run time after the ids claimed just before it, close enough for sweeping.
        self._entries[key] = (True, self._clock() + self.retention_s)

    async def release(self, key: str) -> None:
        """Drop an unfinished claim; see :class:`DedupeStore`."""
        entry = self._entries.get(key)
        if entry is not None and not entry[0]:
            del self._entries[key]

    async def aclose(self) -> None:
        """Forget every id."""
        self._entries.clear()


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS mtls_hooks_dedupe (
    key TEXT PRIMARY KEY,
    done INTEGER NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS mtls_hooks_dedupe_expiry ON mtls_hooks_dedupe (expires_at);
"""
# One statement, so the claim is atomic across connections and processes: insert, or take over
# a row whose lease or retention ended; a live row is left alone (rowcount 0).
_CLAIM_SQL: Final = """
INSERT INTO mtls_hooks_dedupe (key, done, expires_at) VALUES (?1, 0, ?2)
ON CONFLICT (key) DO UPDATE SET done = 0, expires_at = excluded.expires_at
WHERE mtls_hooks_dedupe.expires_at <= ?3
"""
_STATE_SQL: Final = "SELECT done, expires_at FROM mtls_hooks_dedupe WHERE key = ?1"
_COMPLETE_SQL: Final = "UPDATE mtls_hooks_dedupe SET done = 1, expires_at = ?2 WHERE key = ?1"
_RELEASE_SQL: Final = "DELETE FROM mtls_hooks_dedupe WHERE key = ?1 AND done = 0"
_PURGE_SQL: Final = """
DELETE FROM mtls_hooks_dedupe WHERE key IN (
    SELECT key FROM mtls_hooks_dedupe WHERE expires_at <= ?1 LIMIT 1000
)
"""
# Checkpoint the WAL after this many writes (about 4 KiB of WAL each), in the background:
# SQLite's own auto-checkpoint would run it, with its fsyncs, inside a claim on the event loop.
_WRITES_PER_CHECKPOINT: Final = 1000
# Ids this process completed, answered DONE without SQLite while their retention lasts.
DEFAULT_DONE_CACHE_ENTRIES: Final = 4096
_SYNCHRONOUS: Final = ("normal", "full")
_T = TypeVar("_T")


def _claim_on(
    conn: sqlite3.Connection, key: str, now: float, lease_s: float
) -> tuple[ClaimState, float]:
    """Claim in one statement; answer the state and, for a done id, its expiry."""
    if conn.execute(_CLAIM_SQL, (key, now + lease_s, now)).rowcount == 1:
        return ClaimState.CLAIMED, 0.0
    row = conn.execute(_STATE_SQL, (key,)).fetchone()
    # Alone (autocommit), a row purged between the two statements reads as in flight: the
    # sender retries later. In a batch both statements share one transaction.
    if row is not None and row[0]:
        return ClaimState.DONE, float(row[1])
    return ClaimState.IN_FLIGHT, 0.0


class SQLiteDedupeStore:
    """A persistent dedupe store in one SQLite file (WAL): survives restarts, shared by workers.

    **Cost.** Claims, completions and releases submitted during one event-loop turn run in
    one transaction in the next turn (group commit, :mod:`mtls_hooks.stores._sqlite_writer`):
    under load, the fixed cost of a write transaction (the lock, the WAL append, the cache
    check when another worker wrote) is paid per batch, not per request. The batch runs on
    the event loop on a connection that never waits for a lock; when another process holds
    the write lock, it is tried again on the loop, in the next turns and then after short
    waits, for up to ``busy_timeout_s``. Purging expired ids and checkpointing the WAL run on
    a private thread. An in-process front answers without SQLite an id this process
    holds a live claim on (IN_FLIGHT) and an id it completed within the retention window
    (DONE, the last ``done_cache_entries`` of them): a row can change only when its lease or
    retention ends, so these answers are what SQLite would give. Cross-process truth stays in
    the file: every claim the front cannot answer is decided there, in one atomic upsert.

    **Durability of a completion.** :meth:`complete` returns only after the transaction that
    marks the id done has committed, so the receiver answers 204 after that commit:

    * ``synchronous="normal"`` (default): the commit is in the WAL file (handed to the OS, no
      fsync). It survives the process dying at any point (``kill -9``, a crash, the OOM
      killer). An OS crash or power loss may lose the completions made since the WAL was
      last synced to disk, which SQLite does before each background checkpoint (every 1,000
      writes of a process) and the OS on its own; the file is never corrupted (WAL frames
      are checksummed, an incomplete tail is ignored).
      A lost completion means a redelivery of that id runs its handler again: a duplicate,
      as at-least-once delivery allows, never an accepted replay (the signature's timestamp
      tolerance refuses those).
    * ``synchronous="full"``: the commit fsyncs the WAL before :meth:`complete` returns: a 204
      is sent only for an id whose completion is on stable storage (as far as the disk
      honours fsync). Batches then always run on the private thread, one fsync per batch.

    A lost *claim* needs no durability: the handler it guarded died with the machine.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        retention_s: float = DEFAULT_RETENTION_S,
        lease_s: float = DEFAULT_LEASE_S,
        busy_timeout_s: float = 5.0,
        synchronous: str = "normal",
        done_cache_entries: int = DEFAULT_DONE_CACHE_ENTRIES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open (creating if needed) the store at ``path``.

        Args:
            path: the database file; several processes may share it.
            retention_s: how long a processed id is remembered.
            lease_s: how long a claim without ``complete``/``release`` blocks the id.
            busy_timeout_s: how long a write waits for another process's lock.
            synchronous: ``"normal"`` or ``"full"``: what a completion survives (see above).
            done_cache_entries: how many completed ids the in-process front remembers
                (0 disables it; SQLite still answers every id).
            clock: wall-clock seconds (expiry times are stored in the file); injected by tests.

        Raises:
            ConfigurationError: an in-memory path, a file that cannot be opened or switched to
                WAL, an unknown ``synchronous`` mode, or invalid windows or bounds.
        """
        self.retention_s, self.lease_s = _check_windows(retention_s, lease_s)
        self.path = os.fspath(path)
        if self.path in ("", ":memory:") or self.path.startswith("file::memory:"):
            raise ConfigurationError(
                "SQLiteDedupeStore needs a file path; use MemoryDedupeStore in memory"
            )
        if synchronous not in _SYNCHRONOUS:
            raise ConfigurationError(f"synchronous must be 'normal' or 'full', got {synchronous!r}")
        if (
            isinstance(done_cache_entries, bool)
            or not isinstance(done_cache_entries, int)
            or done_cache_entries < 0
        ):
            raise ConfigurationError("done_cache_entries must be an integer >= 0")
        self.synchronous = synchronous
        self.done_cache_entries = done_cache_entries
        self._clock = clock
        self._writes = 0
        self._maintenance: Future[None] | None = None
        self._closed = False
        # The front: ids this process holds (lease end) and ids it completed (retention end).
        self._held: dict[str, float] = {}
        self._done: OrderedDict[str, float] = OrderedDict()
        # Set-up (WAL switch, schema) waits for other processes opening the same new file at
        # once (workers starting together); only then does the fast connection stop waiting.
        self._fast = self._connect(busy_timeout_s=busy_timeout_s)
        self._fast.execute("PRAGMA busy_timeout=0")
        try:
            self._slow = self._connect(busy_timeout_s=busy_timeout_s)
        except BaseException:
            self._fast.close()
            raise
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mtls-hooks-dedupe")
        self._writer = BatchWriter(
            self._fast,
            self._slow,
            self._executor,
            inline=synchronous == "normal",
            on_commit=self._wrote,
            busy_timeout_s=busy_timeout_s,
        )

    @property
    def transactions(self) -> int:
        """Write transactions run so far (each holds one batch of operations)."""
        return self._writer.transactions

    def _connect(self, *, busy_timeout_s: float) -> sqlite3.Connection:
        # Autocommit (isolation_level=None): the writer opens each batch's transaction.
        # check_same_thread=False: the slow connection is used only by the single worker
        # thread, the fast one only by the event loop thread.
        # Workers starting together on a new file: open_wal retries the switch to WAL.
        return open_wal(
            self.path,
            what="dedupe",
            busy_timeout_s=busy_timeout_s,
            pragmas=(f"synchronous={self.synchronous.upper()}", "wal_autocheckpoint=0"),
            schema=_SCHEMA,
            error=ConfigurationError,
        )

    async def _run(self, op: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._closed:
            raise RuntimeError("SQLiteDedupeStore is closed")
        return await self._writer.submit(op)

    def _wrote(self, writes: int) -> None:
        self._writes += writes
        if self._closed:
            return  # a batch that ended while the store closed: no maintenance after it
        if self._writes >= _WRITES_PER_CHECKPOINT and (
            self._maintenance is None or self._maintenance.done()
        ):
            self._writes = 0
            self._maintenance = self._executor.submit(self._maintain, self._clock())

    def _maintain(self, now: float) -> None:
        self._slow.execute(_PURGE_SQL, (now,))
        self._slow.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _remember_done(self, key: str, expires_at: float) -> None:
        if not self.done_cache_entries:
            return
        done = self._done
        done[key] = expires_at
        done.move_to_end(key)
        if len(done) > self.done_cache_entries:
            done.popitem(last=False)

    async def claim(self, key: str) -> ClaimState:
        """Claim ``key``; see :class:`DedupeStore`.

        Raises:
            sqlite3.Error: the database failed (disk full, I/O error, lock wait timed out).
            RuntimeError: the store is closed.
        """
        now = self._clock()
        held = self._held.get(key)
        if held is not None:
            if held > now:
                return ClaimState.IN_FLIGHT
            del self._held[key]  # our lease ended: another process may have taken the id over
        done = self._done.get(key)
        if done is not None:
            if done > now:
                return ClaimState.DONE
            del self._done[key]
        lease_s = self.lease_s
        if self._closed:
            raise RuntimeError("SQLiteDedupeStore is closed")

        # A caller cancelled while its claim waits (the sender hung up) must not leave a
        # committed claim nobody settles, blocking retries for the lease: a claim not yet
        # run is dropped, one that ran on the writer thread meanwhile is released.
        future = self._writer.submit(
            lambda conn: _claim_on(conn, key, now, lease_s),
            lambda result: self._release_orphan(key, result),
        )
        try:
            state, expires_at = await future
        except asyncio.CancelledError:
            # Cancelled after the result was set but before this task resumed: the claim
            # is committed and nobody else will see it, so it is released here.
            if future.done() and not future.cancelled() and future.exception() is None:
                self._release_orphan(key, future.result())
            raise
        if state is ClaimState.CLAIMED:
            self._held[key] = now + lease_s
        elif state is ClaimState.DONE:
            self._remember_done(key, expires_at)
        return state

    def _release_orphan(self, key: str, result: tuple[ClaimState, float]) -> None:
        if not self._closed and result[0] is ClaimState.CLAIMED:
            self._writer.submit(lambda conn: conn.execute(_RELEASE_SQL, (key,)))

    async def complete(self, key: str) -> None:
        """Mark ``key`` done; returns once that is committed (see the class docstring).

        Raises:
            sqlite3.Error: the database failed; the claim then stays until its lease ends.
            RuntimeError: the store is closed.
        """
        expires_at = self._clock() + self.retention_s
        try:
            if self._closed:
                raise RuntimeError("SQLiteDedupeStore is closed")
            await self._writer.submit(lambda conn: conn.execute(_COMPLETE_SQL, (key, expires_at)))
        finally:
            # Failed or not, SQLite answers for the id from now on (a failed completion
            # leaves the claim to its lease there).
            self._held.pop(key, None)
        self._remember_done(key, expires_at)

    async def release(self, key: str) -> None:
        """Drop an unfinished claim; see :class:`DedupeStore`.

        Raises:
            sqlite3.Error: the database failed; the claim then stays until its lease ends.
            RuntimeError: the store is closed.
        """
        try:
            await self._run(lambda conn: conn.execute(_RELEASE_SQL, (key,)))
        finally:
            self._held.pop(key, None)

    def maintain(self) -> None:
        """Purge expired ids and checkpoint the WAL now (normally done in the background)."""
        self._maintain(self._clock())

    def close(self) -> None:
        """Finish background work and close both connections. Idempotent.

        Operations still queued fail with :class:`RuntimeError`; :meth:`aclose` runs them.
        """
        if self._closed:
            return
        self._closed = True
        self._writer.fail_pending(RuntimeError("SQLiteDedupeStore is closed"))
        self._executor.shutdown(wait=True)
        self._fast.close()
        self._slow.close()
        self._held.clear()
        self._done.clear()

    async def aclose(self) -> None:
        """Run the queued operations, then close without blocking the event loop."""
        if self._closed:
            return
        await self._writer.drain()
        await asyncio.get_running_loop().run_in_executor(None, self.close)
