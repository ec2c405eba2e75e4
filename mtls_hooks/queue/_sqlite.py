"""The embedded default: the queue in one SQLite file (WAL), shared by the processes of one
machine.

SQLite has one writer at a time, so a claim is a single ``UPDATE ... RETURNING`` statement
and needs no row locks; readers never block the writer under WAL. Each store object keeps
one connection behind a lock, and waits up to ``busy_timeout_s`` for another process's write
lock. ``synchronous=FULL`` by default: an enqueue that returned survives a power loss, not
only a killed process (``?synchronous=normal`` in the URL trades that for speed: a killed
process still loses nothing).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Final

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.queue._protocol import StoreUnavailableError
from mtls_hooks.queue._sql import JOB_INDEXES, Cursor, SqlQueueStore

__all__ = ["SQLiteQueueStore", "open_wal"]

_SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS mtls_hooks_jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    queue TEXT NOT NULL,
    target TEXT NOT NULL,
    payload BLOB NOT NULL,
    meta TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    tries INTEGER NOT NULL,
    run_at REAL NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    idempotency_key TEXT,
    fifo_key TEXT,
    lease_owner TEXT,
    lease_expires_at REAL,
    last_error TEXT
);
{JOB_INDEXES}
CREATE TABLE IF NOT EXISTS mtls_hooks_attempts (
    job_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    started_at REAL NOT NULL,
    latency_s REAL NOT NULL,
    outcome TEXT NOT NULL,
    status_code INTEGER,
    error TEXT,
    detail TEXT NOT NULL,
    worker TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS mtls_hooks_attempts_job ON mtls_hooks_attempts (job_id, number);
CREATE TABLE IF NOT EXISTS mtls_hooks_targets (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    disabled_reason TEXT,
    failing_since REAL,
    tokens REAL,
    tokens_at REAL
);
"""
_SYNCHRONOUS: Final = ("full", "normal")
_BUSY_CODES: Final = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_OPEN_RETRY_S: Final = 0.005


class SQLiteQueueStore(SqlQueueStore):
    """The queue in a SQLite file; see the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "full",
        busy_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open (creating if needed) the queue at ``path``.

        Args:
            path: the database file; the processes of one machine may share it.
            synchronous: ``"full"`` (survives power loss) or ``"normal"``.
            busy_timeout_s: how long to wait for another process's write lock.
            clock: epoch seconds; injected by tests.

        Raises:
            ConfigurationError: an in-memory path or a bad ``synchronous``.
            StoreUnavailableError: the file cannot be opened or switched to WAL.
        """
        super().__init__(clock=clock)
        self.path = os.fspath(path)
        if self.path in ("", ":memory:") or self.path.startswith("file:"):
            raise ConfigurationError("a SQLite queue needs a file path, shared by its workers")
        if synchronous not in _SYNCHRONOUS:
            raise ConfigurationError(
                f"synchronous must be one of {_SYNCHRONOUS}, got {synchronous!r}"
            )
        self.url = f"sqlite:///{self.path}"
        self._lock = threading.Lock()
        self._closed = False
        # Autocommit; transactions are opened explicitly. One connection used from any
        # thread, one at a time under self._lock.
        conn = open_wal(
            self.path,
            what="queue",
            busy_timeout_s=busy_timeout_s,
            pragmas=(f"synchronous={synchronous.upper()}",),
            schema=_SCHEMA,
            error=StoreUnavailableError,
        )
        self._conn = conn
        self._cur = conn.cursor()

    def __repr__(self) -> str:
        return f"SQLiteQueueStore({self.path!r})"

    @contextlib.contextmanager
    def _cursor(self, *, transaction: bool) -> Iterator[Cursor]:
        with self._lock:
            if self._closed:
                raise StoreUnavailableError("the queue store is closed")
            cursor = self._cur  # one cursor, reused under the lock: none made per call
            try:
                if not transaction:
                    yield cursor
                    return
                # IMMEDIATE: take the write lock up front, so a read-then-write cannot meet
                # another writer half-way (SQLITE_BUSY would then not wait).
                cursor.execute("BEGIN IMMEDIATE")
                try:
                    yield cursor
                except BaseException:
                    self._conn.rollback()
                    raise
                cursor.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                raise StoreUnavailableError(f"queue database {self.path!r}: {exc}") from exc

    def close(self) -> None:
        """Close the connection; idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()


def open_wal(
    path: str,
    *,
    what: str,
    busy_timeout_s: float,
    pragmas: Sequence[str],
    schema: str,
    error: type[Exception],
) -> sqlite3.Connection:
    """Open ``path`` in autocommit mode, switch it to WAL, apply ``pragmas`` and ``schema``.

    The queue and the dedupe store share it: several processes on one machine need WAL, and a
    file that cannot use it (a network filesystem) must fail at start-up, not at the first
    contended write.

    Processes starting together on a new file: SQLite's switch to WAL answers "database is
    locked" at once, without its busy wait, when another connection switches the file at that
    instant (two processes opening one new file failed about one time in three). The open is
    tried again for up to ``busy_timeout_s``; this runs once, at start-up.

    Raises:
        error: (``what`` names the database) the file cannot be opened, cannot use WAL, or
            the schema cannot be applied.
    """
    deadline = time.monotonic() + busy_timeout_s
    while True:
        try:
            return _open_wal_once(
                path, what=what, busy_timeout_s=busy_timeout_s, pragmas=pragmas, schema=schema,
                error=error,
            )  # fmt: skip
        except Exception as exc:
            cause = exc.__cause__
            busy = isinstance(cause, sqlite3.OperationalError) and (
                cause.sqlite_errorcode in _BUSY_CODES
            )
            if not busy or time.monotonic() >= deadline:
                raise
        time.sleep(_OPEN_RETRY_S)


def _open_wal_once(
    path: str,
    *,
    what: str,
    busy_timeout_s: float,
    pragmas: Sequence[str],
    schema: str,
    error: type[Exception],
) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(
            path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise error(f"cannot open {what} database {path!r}: {exc}") from exc
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise error(f"{what} database {path!r} cannot use WAL (journal_mode={mode})")
        for pragma in pragmas:
            conn.execute(f"PRAGMA {pragma}")
        conn.executescript(schema)
    except sqlite3.Error as exc:
        conn.close()
        raise error(f"cannot use {what} database {path!r}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn
