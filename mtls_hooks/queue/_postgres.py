"""The queue across machines: PostgreSQL through psycopg 3 and a psycopg_pool pool.

* Claims lock their rows ``FOR UPDATE OF j SKIP LOCKED``: concurrent workers take disjoint
  small batches without waiting on one another (the shape Convoy's PostgreSQL queue uses).
* Enqueue is one ``INSERT ... RETURNING id, pg_notify(...)`` statement: the notification is
  sent at commit, so a rolled-back transactional enqueue wakes nobody.
* ``LISTEN`` needs a session connection: the listener runs on a dedicated connection of its
  own in a thread, never on a pooled one (a transaction pooler such as PgBouncer would drop
  it between transactions). Workers poll as well; a notification is only a wake-up.
* Workers' own transactions (claim, renew, settle) commit with ``synchronous_commit = off``:
  a database crash can lose the last few, which only repeats deliveries (see ``_relax``);
  an enqueue always waits for its commit to be on disk.
* Every statement works with ``prepare_threshold=None`` (no server-side prepared statements),
  which PgBouncer's transaction mode needs; pass it when a pooler sits in between.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import psycopg
import psycopg_pool

from mtls_hooks.queue._protocol import NewJob, Settlement, StoreUnavailableError
from mtls_hooks.queue._sql import (
    EXISTING_SQL,
    INSERT_SQL,
    JOB_INDEXES,
    SETTLE_SQL,
    SETTLED_STATE,
    Cursor,
    SqlQueueStore,
    insert_params,
    pyformat,
    settle_params,
)

__all__ = ["PostgresQueueStore"]

_LOG = logging.getLogger("mtls_hooks.queue")
CHANNEL: Final = "mtls_hooks_queue"  # the prefix of each schema's channel (see channel_for)
_SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS mtls_hooks_jobs (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    queue TEXT NOT NULL,
    target TEXT NOT NULL,
    payload BYTEA NOT NULL,
    meta TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    tries INTEGER NOT NULL,
    run_at DOUBLE PRECISION NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    idempotency_key TEXT,
    fifo_key TEXT,
    lease_owner TEXT,
    lease_expires_at DOUBLE PRECISION,
    last_error TEXT
);
{JOB_INDEXES}
CREATE TABLE IF NOT EXISTS mtls_hooks_attempts (
    job_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    latency_s DOUBLE PRECISION NOT NULL,
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
    failing_since DOUBLE PRECISION,
    tokens DOUBLE PRECISION,
    tokens_at DOUBLE PRECISION
);
"""
# One advisory lock key for schema creation: CREATE ... IF NOT EXISTS races between
# processes starting together (a unique violation on pg_type), so they take turns.
_SCHEMA_LOCK: Final = 0x6D746C73


# Settlements in one statement each, whatever their number: arrays, unnested server-side
# (psycopg would otherwise send one statement per row).
_SETTLE_MANY: Final = """
UPDATE mtls_hooks_jobs j SET state = v.state, run_at = COALESCE(v.run_at, j.run_at),
    attempts = j.attempts + v.counted, tries = j.tries + v.counted,
    last_error = CASE WHEN v.state = 'done' THEN NULL ELSE COALESCE(v.error, j.last_error) END,
    lease_owner = NULL, lease_expires_at = NULL, updated_at = %(now)s
FROM unnest(%(ids)s::text[], %(states)s::text[], %(run_ats)s::float8[], %(counted)s::int[],
            %(errors)s::text[]) AS v(id, state, run_at, counted, error)
WHERE j.id = v.id AND j.state = 'running' AND j.lease_owner = %(owner)s"""
_RECORD_MANY: Final = """
INSERT INTO mtls_hooks_attempts
    (job_id, number, started_at, latency_s, outcome, status_code, error, detail, worker)
SELECT * FROM unnest(%s::text[], %s::int[], %s::float8[], %s::float8[], %s::text[],
                     %s::int[], %s::text[], %s::text[], %s::text[])"""


def channel_for(schema: str) -> str:
    """The NOTIFY channel of the queue in ``schema``: an identifier with no quoting needed."""
    digest = hashlib.sha256(schema.encode()).hexdigest()[:16]
    return f"{CHANNEL}_{digest}"


def describe(url: str) -> str:
    """``host:port/db`` of a PostgreSQL URL, for messages: never its password."""
    try:
        parts = urlsplit(url)
        where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or ''}"
    except ValueError:
        return "PostgreSQL (unparseable URL)"
    return f"PostgreSQL at {where}"


class PostgresQueueStore(SqlQueueStore):
    """The queue in PostgreSQL; see the module docstring."""

    _LOCK_CLAUSE = " FOR UPDATE OF j SKIP LOCKED"
    _ROW_LOCK = " FOR UPDATE"
    # In a transaction, so that its commit can skip the disk wait (see _relax).
    _CLAIM_IN_TRANSACTION = True
    _RETURN_ID = " RETURNING id"  # with this schema's pg_notify: see __init__

    def __init__(
        self,
        url: str,
        *,
        min_connections: int = 1,
        max_connections: int = 4,
        prepare_threshold: int | None = 5,
        connect_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Connect to ``url`` and create the tables if needed.

        Args:
            url: a libpq URL, ``postgresql://user@host:5432/db``; ``options=-csearch_path=s``
                in its query selects a schema.
            min_connections: connections the pool keeps open.
            max_connections: the pool's bound.
            prepare_threshold: psycopg's; ``None`` behind PgBouncer's transaction mode.
            connect_timeout_s: bound on connecting, at start and for each pooled connection.
            clock: epoch seconds; injected by tests.

        Raises:
            StoreUnavailableError: the server cannot be reached or refuses us.
        """
        super().__init__(clock=clock)
        self.url = url
        self._where = describe(url)
        self._connect_kwargs: dict[str, Any] = {
            "autocommit": True,
            "prepare_threshold": prepare_threshold,
            "connect_timeout": max(1, round(connect_timeout_s)),
        }
        self._listener: threading.Thread | None = None
        self._stopping = threading.Event()
        self._closed = False
        try:
            with psycopg.connect(url, **self._connect_kwargs) as conn:
                conn.execute("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK,))
                try:
                    conn.execute(_SCHEMA)
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK,))
                row = conn.execute("SELECT current_schema()").fetchone()
        except psycopg.Error as exc:
            raise StoreUnavailableError(f"cannot use {self._where}: {_first_line(exc)}") from exc
        #: The NOTIFY channel: one per schema, so queues in other schemas of the same
        #: database (other deployments, parallel tests) do not wake these workers.
        self.channel = channel_for(row[0] if row else "")
        self._insert_sql = pyformat(
            INSERT_SQL + f" RETURNING id, pg_notify('{self.channel}', queue)"
        )
        self._settle_sql = pyformat(SETTLE_SQL)
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] = (
            psycopg_pool.ConnectionPool(
                url,
                min_size=min_connections,
                max_size=max_connections,
                kwargs=self._connect_kwargs,
                timeout=connect_timeout_s,
                open=True,
                name="mtls-hooks-queue",
            )
        )

    def __repr__(self) -> str:
        return f"PostgresQueueStore({self._where!r})"

    def _sql(self, sql: str) -> str:
        return pyformat(sql)

    @contextlib.contextmanager
    def _cursor(self, *, transaction: bool) -> Iterator[Cursor]:
        if self._closed:
            raise StoreUnavailableError("the queue store is closed")
        try:
            with self._pool.connection() as conn:
                if transaction:
                    with conn.transaction(), conn.cursor() as cursor:
                        yield cursor
                else:
                    with conn.cursor() as cursor:
                        yield cursor
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise StoreUnavailableError(f"{self._where}: {_first_line(exc)}") from exc

    def _settle_on(
        self, cursor: Cursor, owner: str, settlements: Sequence[Settlement], now: float
    ) -> tuple[int, bool]:
        cursor.execute(
            _SETTLE_MANY,
            {
                "ids": [s.job_id for s in settlements],
                "states": [SETTLED_STATE[s.kind] for s in settlements],
                "run_ats": [s.run_at for s in settlements],
                "counted": [0 if s.kind == "release" else 1 for s in settlements],
                "errors": [s.error for s in settlements],
                "owner": owner,
                "now": now,
            },
        )
        held = max(cursor.rowcount, 0)
        attempts = [s.attempt for s in settlements if s.attempt is not None]
        if attempts:
            cursor.execute(_RECORD_MANY, [list(column) for column in zip(*attempts, strict=True)])
        wake = any(s.kind == "release" and (s.run_at or 0) <= now for s in settlements)
        if wake:
            self._notify(cursor)
        return held, wake

    def _relax(self, cursor: Cursor) -> None:
        # Local to the transaction: the pooled connection keeps durable commits for enqueues.
        cursor.execute("SET LOCAL synchronous_commit = off")

    def _notify(self, cursor: Cursor) -> None:
        cursor.execute(f"SELECT pg_notify('{self.channel}', '')")

    def enqueue_on(self, cursor: Cursor, job: NewJob) -> tuple[str, bool]:
        """Insert ``job`` with ``cursor`` (a caller's psycopg connection or cursor), inside
        the caller's transaction: the job commits or rolls back with the caller's writes.

        The caller's connection must see this store's tables (the same database and
        ``search_path``).
        """
        return super().enqueue_on(cursor, job)

    async def aenqueue_on(
        self, conn: psycopg.AsyncConnection[Any], job: NewJob
    ) -> tuple[str, bool]:
        """:meth:`enqueue_on` on an asyncio psycopg connection, in the caller's transaction."""
        params = insert_params(job, self._clock())
        async with conn.cursor() as cursor:
            await cursor.execute(self._insert_sql, params)
            if cursor.rowcount == 1:
                return str(params["id"]), True
            await cursor.execute(pyformat(EXISTING_SQL), params)
            existing = await cursor.fetchone()
        if existing is None:  # pragma: no cover - the conflicting row vanished (purged)
            raise StoreUnavailableError(f"job {params['id']!r} conflicts with a purged job")
        return str(existing[0]), False

    async def asettle_on(
        self, conn: psycopg.AsyncConnection[Any], owner: str, settlement: Settlement
    ) -> bool:
        """Apply ``settlement`` on a caller's asyncio psycopg connection, in its transaction:
        the job's new state commits or rolls back with the caller's writes.

        Fenced like :meth:`settle`: True only while ``owner`` still holds the job's lease.
        No attempt is recorded here (the worker records it when it settles).
        """
        params = settle_params(settlement, owner, self._clock())
        async with conn.cursor() as cursor:
            await cursor.execute(self._settle_sql, params)
            return cursor.rowcount == 1

    def async_pool(self, *, max_size: int) -> psycopg_pool.AsyncConnectionPool[Any]:
        """A new, unopened asyncio pool to this store's database, with its settings but
        transactions on (``autocommit`` off): for handlers writing beside a settlement."""
        kwargs = {**self._connect_kwargs, "autocommit": False}
        return psycopg_pool.AsyncConnectionPool(
            self.url, min_size=1, max_size=max_size, kwargs=kwargs, open=False,
            name="mtls-hooks-queue-async",
        )  # fmt: skip

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        """See :meth:`QueueStore.subscribe`: also wakes on ``NOTIFY`` from any process."""
        unsubscribe = super().subscribe(wake)
        with self._listeners_lock:
            if self._listener is None:
                self._listener = threading.Thread(
                    target=self._listen, name="mtls-hooks-queue-listen", daemon=True
                )
                self._listener.start()
        return unsubscribe

    def _listen(self) -> None:
        # A session connection of its own; reconnects after a failure, polling covers the gap.
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.url, **self._connect_kwargs) as conn:
                    conn.execute(f"LISTEN {self.channel}")
                    self._wake_local()  # anything enqueued while we were not listening
                    while not self._stopping.is_set():
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            self._wake_local()
            except psycopg.Error as exc:
                _LOG.warning("queue listener on %s: %s", self._where, _first_line(exc))
                self._stopping.wait(1.0)

    def close(self) -> None:
        """Stop the listener and close the pool; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        if self._listener is not None:
            self._listener.join(5)
        self._pool.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
