"""The SQL half of the queue engine, shared by the SQLite and PostgreSQL stores.

Both backends run the same statements, written once with ``:name`` parameters (sqlite3's
style; turned into psycopg's ``%(name)s`` for PostgreSQL). A backend supplies its schema,
how it opens a transaction, the claim's row-locking clause and how it wakes workers:

* SQLite: one connection behind a lock, WAL, ``BEGIN IMMEDIATE`` transactions; the claim
  is one ``UPDATE ... WHERE seq IN (SELECT ...)`` statement, atomic because SQLite has one
  writer at a time.
* PostgreSQL: a connection pool in autocommit; the claim's inner ``SELECT`` ends with
  ``FOR UPDATE OF j SKIP LOCKED`` so concurrent workers take disjoint rows without waiting.

Every claim is two statements, each atomic on its own: expired leases first (the sweep of a
crashed worker's rows), then due pending jobs, each in its own partial index.
"""

# ruff: noqa: S608 - every statement is built from this module's constants; values are
# always bound as parameters.
from __future__ import annotations

import contextlib
import functools
import json
import re
import secrets
import threading
import time
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Protocol

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.queue._protocol import (
    LOST_ATTEMPT,
    AttemptRecord,
    Job,
    JobState,
    JsonText,
    NewJob,
    QueueStats,
    Settlement,
    Target,
    check_seconds,
)

__all__ = [
    "EXISTING_SQL",
    "INSERT_SQL",
    "JOB_INDEXES",
    "SETTLED_STATE",
    "SETTLE_SQL",
    "Cursor",
    "SqlQueueStore",
    "insert_params",
    "new_job_id",
    "pyformat",
    "settle_params",
]

# The jobs table's indexes, the same DDL in SQLite and PostgreSQL (both take partial indexes).
JOB_INDEXES: Final = """CREATE UNIQUE INDEX IF NOT EXISTS mtls_hooks_jobs_idempotency
    ON mtls_hooks_jobs (queue, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS mtls_hooks_jobs_due
    ON mtls_hooks_jobs (queue, run_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS mtls_hooks_jobs_leased
    ON mtls_hooks_jobs (queue, lease_expires_at) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS mtls_hooks_jobs_fifo ON mtls_hooks_jobs (queue, fifo_key, seq)
    WHERE fifo_key IS NOT NULL AND state IN ('pending', 'running');
-- Only the dead letter is listed by state; an index over every state would be rewritten by
-- each claim and settlement (status counts scan: purge delivered rows to keep it quick).
CREATE INDEX IF NOT EXISTS mtls_hooks_jobs_failed
    ON mtls_hooks_jobs (queue, target) WHERE state = 'failed';"""
_JOB_COLUMNS: Final = (
    "id, queue, target, payload, meta, state, attempts, tries, run_at, created_at, "
    "updated_at, idempotency_key, fifo_key, lease_owner, lease_expires_at, last_error, seq"
)
INSERT_SQL: Final = f"""
INSERT INTO mtls_hooks_jobs ({_JOB_COLUMNS.removesuffix(", seq")}) VALUES (
    :id, :queue, :target, :payload, :meta, 'pending', 0, 0, :run_at, :now, :now,
    :idempotency_key, :fifo_key, NULL, NULL, NULL
) ON CONFLICT DO NOTHING"""
EXISTING_SQL: Final = """
SELECT id FROM mtls_hooks_jobs
WHERE (queue = :queue AND idempotency_key = :idempotency_key) OR id = :id"""
# A FIFO job waits while an earlier job with its key is pending or running.
_FIFO_FREE: Final = """(j.fifo_key IS NULL OR NOT EXISTS (
    SELECT 1 FROM mtls_hooks_jobs e
    WHERE e.queue = j.queue AND e.fifo_key = j.fifo_key AND e.seq < j.seq
      AND e.state IN ('pending', 'running')))"""
_CLAIM: Final = f"""
UPDATE mtls_hooks_jobs SET state = 'running', lease_owner = :owner,
    lease_expires_at = :expires_at, updated_at = :now{{lost}}
WHERE seq IN (
    SELECT j.seq FROM mtls_hooks_jobs j LEFT JOIN mtls_hooks_targets t ON t.name = j.target
    WHERE j.queue = :queue AND {{due}} AND COALESCE(t.enabled, 1) = 1 AND {_FIFO_FREE}
    ORDER BY {{order}} LIMIT :limit {{lock}}
) RETURNING {_JOB_COLUMNS}"""
# Taking over an expired lease counts the attempt its worker never settled (the right-hand
# sides read the row as it was, so lease_owner is the worker that stopped).
# A worker taking back its own lease (a late heartbeat) has lost nothing: its run goes on.
_LOST: Final = f""",
    attempts = attempts + (CASE WHEN lease_owner = :owner THEN 0 ELSE 1 END),
    tries = tries + (CASE WHEN lease_owner = :owner THEN 0 ELSE 1 END),
    last_error = CASE WHEN lease_owner = :owner THEN last_error
        ELSE '{LOST_ATTEMPT}: its worker ' || lease_owner || ' stopped before settling it' END"""
_DUE_EXPIRED: Final = (
    "j.state = 'running' AND j.lease_expires_at <= :now",
    "j.lease_expires_at",
    _LOST,
)
_DUE_PENDING: Final = ("j.state = 'pending' AND j.run_at <= :now", "j.run_at, j.seq", "")
_SWEEP_EVERY_S: Final = 1.0
SETTLED_STATE: Final = {
    "done": "done",
    "failed": "failed",
    "retry": "pending",
    "release": "pending",
}
_RENEW: Final = """
UPDATE mtls_hooks_jobs SET lease_expires_at = :expires_at
WHERE id = :id AND state = 'running' AND lease_owner = :owner"""
_SETTLE: Final = """
UPDATE mtls_hooks_jobs SET state = :state, run_at = COALESCE(:run_at, run_at),
    attempts = attempts + :counted, tries = tries + :counted,
    last_error = CASE WHEN :state = 'done' THEN NULL ELSE COALESCE(:error, last_error) END,
    lease_owner = NULL, lease_expires_at = NULL, updated_at = :now
WHERE id = :id AND state = 'running' AND lease_owner = :owner"""
SETTLE_SQL: Final = _SETTLE
_RECORD: Final = """
INSERT INTO mtls_hooks_attempts
    (job_id, number, started_at, latency_s, outcome, status_code, error, detail, worker)
VALUES (:job_id, :number, :started_at, :latency_s, :outcome, :status_code, :error, :detail,
    :worker)"""
_HISTORY: Final = """
SELECT job_id, number, started_at, latency_s, outcome, status_code, error, detail, worker
FROM mtls_hooks_attempts WHERE job_id = :id ORDER BY number, started_at"""
_STATS: Final = """
SELECT target, state, COUNT(*) FROM mtls_hooks_jobs WHERE queue = :queue GROUP BY target, state"""
_OLDEST_DUE: Final = """
SELECT MIN(run_at) FROM mtls_hooks_jobs
WHERE queue = :queue AND state = 'pending' AND run_at <= :now"""
_REQUEUE: Final = """
UPDATE mtls_hooks_jobs SET state = 'pending', run_at = :now, attempts = 0, updated_at = :now
WHERE queue = :queue AND state = 'failed' AND {which}"""
_PURGE_ATTEMPTS: Final = """
DELETE FROM mtls_hooks_attempts WHERE job_id IN (
    SELECT id FROM mtls_hooks_jobs
    WHERE queue = :queue AND state IN ('done', 'failed') AND updated_at <= :before)"""
_PURGE_JOBS: Final = """
DELETE FROM mtls_hooks_jobs
WHERE queue = :queue AND state IN ('done', 'failed') AND updated_at <= :before"""
_PUT_TARGET: Final = """
INSERT INTO mtls_hooks_targets (name, config, enabled) VALUES (:name, :config, :enabled)
ON CONFLICT (name) DO UPDATE SET config = excluded.config"""
_TARGET_COLUMNS: Final = "name, config, enabled, disabled_reason, failing_since"
_SET_ENABLED: Final = """
UPDATE mtls_hooks_targets SET enabled = :enabled, disabled_reason = :reason,
    failing_since = CASE WHEN :enabled = 1 THEN NULL ELSE failing_since END
WHERE name = :name"""
_STREAK: Final = "SELECT enabled, failing_since FROM mtls_hooks_targets WHERE name = :name"
_STREAK_START: Final = "UPDATE mtls_hooks_targets SET failing_since = :now WHERE name = :name"
_STREAK_END: Final = """
UPDATE mtls_hooks_targets SET failing_since = NULL
WHERE name = :name AND failing_since IS NOT NULL"""
_BUCKET: Final = "SELECT tokens, tokens_at FROM mtls_hooks_targets WHERE name = :name"
_BUCKET_SET: Final = """
UPDATE mtls_hooks_targets SET tokens = :tokens, tokens_at = :now WHERE name = :name"""


class Cursor(Protocol):
    """What both DB-API cursors (sqlite3, psycopg) give the shared statements."""

    @property
    def rowcount(self) -> int: ...
    def execute(self, sql: Any, params: Any = ..., /) -> Any: ...
    def executemany(self, sql: Any, params: Any, /) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


def new_job_id() -> str:
    """A fresh job id: ``msg_`` and 128 random bits, the shape of a webhook-id."""
    return "msg_" + secrets.token_urlsafe(16)


@functools.lru_cache(maxsize=128)
def pyformat(sql: str) -> str:
    """Turn ``:name`` parameters into psycopg's ``%(name)s``."""
    return re.sub(r"(?<![:\w]):([a-z_]+)", r"%(\1)s", sql)


@functools.lru_cache(maxsize=256)
def _meta(text: str) -> Mapping[str, Any]:
    # A queue's jobs share a few meta texts (one per event type): parse each once.
    return types.MappingProxyType(json.loads(text))


_STATES: Final = {state.value: state for state in JobState}


def _job(row: Sequence[Any]) -> Job:
    return Job(
        id=row[0],
        queue=row[1],
        target=row[2],
        payload=bytes(row[3]),
        meta=_meta(row[4]),
        state=_STATES[row[5]],
        attempts=row[6],
        tries=row[7],
        run_at=row[8],
        created_at=row[9],
        updated_at=row[10],
        idempotency_key=row[11],
        fifo_key=row[12],
        lease_owner=row[13],
        lease_expires_at=row[14],
        last_error=row[15],
        seq=row[16],
    )


def _target(row: Sequence[Any]) -> Target:
    return Target(row[0], json.loads(row[1]), bool(row[2]), row[3], row[4])


@functools.lru_cache(maxsize=256)
def _cached_meta_text(items: tuple[tuple[str, Any], ...]) -> str:
    return json.dumps(dict(items), separators=(",", ":"))


def _meta_text(meta: Mapping[str, Any] | JsonText) -> str:
    """``meta`` as JSON; the few shapes an outbox uses (one event type each) are cached."""
    if isinstance(meta, JsonText):
        return meta
    try:
        if not meta:
            return "{}"
        try:
            return _cached_meta_text(tuple(meta.items()))
        except TypeError:  # an unhashable value: serialise it afresh
            return json.dumps(dict(meta), separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"job meta is not JSON-serialisable: {exc}") from exc


def insert_params(job: NewJob, now: float) -> dict[str, Any]:
    """The parameters of the enqueue statement for ``job`` at ``now``.

    Raises:
        ConfigurationError: ``meta`` is not JSON-serialisable.
    """
    meta = _meta_text(job.meta)
    return {
        "id": job.job_id or new_job_id(),
        "queue": job.queue,
        "target": job.target,
        "payload": job.payload,
        "meta": meta,
        "run_at": now if job.run_at is None else job.run_at,
        "now": now,
        "idempotency_key": job.idempotency_key,
        "fifo_key": job.fifo_key,
    }


class SqlQueueStore:
    """The :class:`~mtls_hooks.queue.QueueStore` protocol in SQL; see the module docstring."""

    url: str
    _LOCK_CLAUSE: str = ""  # appended to the claim's inner SELECT
    _ROW_LOCK: str = ""  # appended to a read-then-write of one target row
    _CLAIM_IN_TRANSACTION: bool = False  # a claim alone runs in autocommit
    _RETURN_ID: str = ""  # what the insert returns; PostgreSQL sends its NOTIFY there

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._insert_sql = self._sql(INSERT_SQL + self._RETURN_ID)
        self._next_sweep = 0.0
        self._claim_sql = tuple(
            self._sql(_CLAIM.format(due=due, order=order, lock=self._LOCK_CLAUSE, lost=lost))
            for due, order, lost in (_DUE_EXPIRED, _DUE_PENDING)
        )
        self._listeners: list[Callable[[], None]] = []
        self._listeners_lock = threading.Lock()

    # -- what a backend supplies ------------------------------------------------------

    def _sql(self, sql: str) -> str:
        return sql

    def _cursor(self, *, transaction: bool) -> contextlib.AbstractContextManager[Cursor]:
        """A cursor in autocommit, or in a transaction committed on exit."""
        raise NotImplementedError

    def _relax(self, cursor: Cursor) -> None:
        """Let a worker's transaction (claim, renew, settle) commit without waiting for disk.

        Losing one in a database crash only repeats work the guarantees already allow: a
        lost claim or renewal is a lease that ends early, a lost settlement a message
        delivered again (at least once, deduped by its webhook-id). Enqueues and operators'
        changes never relax.
        """

    def _notify(self, cursor: Cursor) -> None:
        """Tell workers, within the writing transaction, that jobs became claimable."""

    def _wake_local(self) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for wake in listeners:
            wake()

    # -- jobs -------------------------------------------------------------------------

    def enqueue_on(self, cursor: Cursor, job: NewJob) -> tuple[str, bool]:
        """Insert ``job`` with ``cursor``, inside whatever transaction it is in.

        Returns:
            ``(id, created)``; for a known idempotency key or id, the existing job's id.
        """
        params = insert_params(job, self._clock())
        cursor.execute(self._insert_sql, params)
        if cursor.rowcount == 1:  # inserted; 0 when an idempotency key or the id was known
            return str(params["id"]), True
        cursor.execute(self._sql(EXISTING_SQL), params)
        existing = cursor.fetchone()
        if existing is None:  # pragma: no cover - the conflicting row vanished (purged)
            raise ConfigurationError(f"job {params['id']!r} conflicts with a purged job")
        return str(existing[0]), False

    def enqueue(self, job: NewJob) -> tuple[str, bool]:
        """See :meth:`QueueStore.enqueue`."""
        with self._cursor(transaction=False) as cursor:
            job_id, created = self.enqueue_on(cursor, job)
        if created:
            self._wake_local()
        return job_id, created

    def enqueue_many(self, jobs: Sequence[NewJob]) -> list[tuple[str, bool]]:
        """See :meth:`QueueStore.enqueue_many`."""
        if not jobs:
            return []
        with self._cursor(transaction=True) as cursor:
            results = [self.enqueue_on(cursor, job) for job in jobs]
        if any(created for _, created in results):
            self._wake_local()
        return results

    def claim(
        self,
        queue: str,
        owner: str,
        *,
        limit: int,
        lease_s: float,
        settlements: Sequence[Settlement] = (),
    ) -> list[Job]:
        """See :meth:`QueueStore.claim`."""
        now = self._clock()
        params = {"queue": queue, "owner": owner, "now": now, "expires_at": now + lease_s}
        claimed: list[Job] = []
        wake = False
        expired_sql, pending_sql = self._claim_sql
        # Expired leases are swept first once a second (so a busy queue cannot starve a
        # crashed worker's messages), else only when due messages do not fill the batch.
        sweep_first = time.monotonic() >= self._next_sweep
        with self._cursor(transaction=bool(settlements) or self._CLAIM_IN_TRANSACTION) as cursor:
            self._relax(cursor)
            if settlements:
                wake = self._settle_on(cursor, owner, settlements, now)[1]
            order = (expired_sql, pending_sql) if sweep_first else (pending_sql, expired_sql)
            for sql in order:
                left = limit - len(claimed)
                if left <= 0:
                    break
                cursor.execute(sql, {**params, "limit": left})
                claimed += [_job(row) for row in cursor.fetchall()]
                if sql is expired_sql:
                    self._next_sweep = time.monotonic() + _SWEEP_EVERY_S
        if wake:
            self._wake_local()
        claimed.sort(key=lambda job: (job.run_at, job.seq))
        return claimed

    def renew(self, owner: str, job_ids: Sequence[str], lease_s: float) -> int:
        """See :meth:`QueueStore.renew`."""
        if not job_ids:
            return 0
        expires_at = self._clock() + lease_s
        rows = [{"id": job_id, "owner": owner, "expires_at": expires_at} for job_id in job_ids]
        with self._cursor(transaction=True) as cursor:
            self._relax(cursor)
            cursor.executemany(self._sql(_RENEW), rows)
            return max(cursor.rowcount, 0)

    def settle(self, owner: str, settlements: Sequence[Settlement]) -> int:
        """See :meth:`QueueStore.settle`."""
        if not settlements:
            return 0
        with self._cursor(transaction=True) as cursor:
            self._relax(cursor)
            held, wake = self._settle_on(cursor, owner, settlements, self._clock())
        if wake:
            self._wake_local()
        return held

    def _settle_on(
        self, cursor: Cursor, owner: str, settlements: Sequence[Settlement], now: float
    ) -> tuple[int, bool]:
        updates = [settle_params(s, owner, now) for s in settlements]
        records = [_record_params(s.attempt) for s in settlements if s.attempt is not None]
        wake = any(s.kind == "release" and (s.run_at or 0) <= now for s in settlements)
        cursor.executemany(self._sql(_SETTLE), updates)
        held = max(cursor.rowcount, 0)
        if records:
            cursor.executemany(self._sql(_RECORD), records)
        if wake:
            self._notify(cursor)
        return held, wake

    def get(self, job_id: str) -> Job | None:
        """See :meth:`QueueStore.get`."""
        with self._cursor(transaction=False) as cursor:
            sql = f"SELECT {_JOB_COLUMNS} FROM mtls_hooks_jobs WHERE id = :id"
            cursor.execute(self._sql(sql), {"id": job_id})
            row = cursor.fetchone()
        return None if row is None else _job(row)

    def history(self, job_id: str) -> list[AttemptRecord]:
        """See :meth:`QueueStore.history`."""
        with self._cursor(transaction=False) as cursor:
            cursor.execute(self._sql(_HISTORY), {"id": job_id})
            return [AttemptRecord(*row) for row in cursor.fetchall()]

    def jobs(
        self,
        queue: str,
        *,
        state: JobState | None = None,
        target: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """See :meth:`QueueStore.jobs`."""
        sql = f"SELECT {_JOB_COLUMNS} FROM mtls_hooks_jobs WHERE queue = :queue"
        if state is not None:
            sql += " AND state = :state"
        if target is not None:
            sql += " AND target = :target"
        sql += " ORDER BY seq LIMIT :limit"
        params = {"queue": queue, "state": state and state.value, "target": target}
        with self._cursor(transaction=False) as cursor:
            cursor.execute(self._sql(sql), {**params, "limit": limit})
            return [_job(row) for row in cursor.fetchall()]

    def stats(self, queue: str) -> QueueStats:
        """See :meth:`QueueStore.stats`."""
        now = self._clock()
        by_state: dict[str, int] = {state.value: 0 for state in JobState}
        by_target: dict[str, dict[str, int]] = {}
        with self._cursor(transaction=False) as cursor:
            cursor.execute(self._sql(_STATS), {"queue": queue})
            for target, state, count in cursor.fetchall():
                by_state[state] += count
                by_target.setdefault(target, {})[state] = count
            cursor.execute(self._sql(_OLDEST_DUE), {"queue": queue, "now": now})
            oldest = cursor.fetchone()[0]
        return QueueStats(by_state, by_target, None if oldest is None else now - oldest)

    def requeue(self, queue: str, *, job_ids: Sequence[str] = (), target: str | None = None) -> int:
        """See :meth:`QueueStore.requeue`."""
        params: dict[str, Any] = {"queue": queue, "now": self._clock()}
        with self._cursor(transaction=True) as cursor:
            if job_ids:
                sql = _REQUEUE.format(which="id = :id")
                cursor.executemany(self._sql(sql), [{**params, "id": i} for i in job_ids])
            else:
                which = "target = :target" if target is not None else "1 = 1"
                cursor.execute(
                    self._sql(_REQUEUE.format(which=which)), {**params, "target": target}
                )
            count = max(cursor.rowcount, 0)
            if count:
                self._notify(cursor)
        if count:
            self._wake_local()
        return count

    def purge(self, queue: str, *, older_than_s: float) -> int:
        """See :meth:`QueueStore.purge`.

        Raises:
            ConfigurationError: a negative or non-finite age.
        """
        older_than_s = check_seconds("older_than_s", older_than_s, zero=True)
        params = {"queue": queue, "before": self._clock() - older_than_s}
        with self._cursor(transaction=True) as cursor:
            cursor.execute(self._sql(_PURGE_ATTEMPTS), params)
            cursor.execute(self._sql(_PURGE_JOBS), params)
            return max(cursor.rowcount, 0)

    # -- targets ----------------------------------------------------------------------

    def put_target(self, name: str, config: Mapping[str, Any], *, enabled: bool = True) -> None:
        """See :meth:`QueueStore.put_target`."""
        text = json.dumps(dict(config), separators=(",", ":"), sort_keys=True)
        with self._cursor(transaction=False) as cursor:
            params = {"name": name, "config": text, "enabled": int(enabled)}
            cursor.execute(self._sql(_PUT_TARGET), params)

    def get_target(self, name: str) -> Target | None:
        """See :meth:`QueueStore.get_target`."""
        sql = f"SELECT {_TARGET_COLUMNS} FROM mtls_hooks_targets WHERE name = :name"
        with self._cursor(transaction=False) as cursor:
            cursor.execute(self._sql(sql), {"name": name})
            row = cursor.fetchone()
        return None if row is None else _target(row)

    def targets(self) -> list[Target]:
        """See :meth:`QueueStore.targets`."""
        with self._cursor(transaction=False) as cursor:
            cursor.execute(f"SELECT {_TARGET_COLUMNS} FROM mtls_hooks_targets ORDER BY name")
            return [_target(row) for row in cursor.fetchall()]

    def set_enabled(self, name: str, enabled: bool, *, reason: str | None = None) -> bool:
        """See :meth:`QueueStore.set_enabled`."""
        params = {"name": name, "enabled": int(enabled), "reason": None if enabled else reason}
        with self._cursor(transaction=True) as cursor:
            cursor.execute(self._sql(_SET_ENABLED), params)
            found = cursor.rowcount > 0
            if found and enabled:
                self._notify(cursor)
        if found and enabled:
            self._wake_local()
        return found

    def _locked_target(self, cursor: Cursor, sql: str, name: str) -> Any:
        cursor.execute(self._sql(sql + self._ROW_LOCK), {"name": name})
        return cursor.fetchone()

    def note_failure(self, name: str, *, window_s: float) -> bool:
        """See :meth:`QueueStore.note_failure`."""
        now = self._clock()
        with self._cursor(transaction=True) as cursor:
            row = self._locked_target(cursor, _STREAK, name)
            if row is None:
                return False
            enabled, failing_since = row
            if failing_since is None:
                cursor.execute(self._sql(_STREAK_START), {"name": name, "now": now})
                return False
            if not enabled or now - failing_since < window_s:
                return False
            reason = f"circuit breaker: every delivery failed for {now - failing_since:.0f} s"
            params = {"name": name, "enabled": 0, "reason": reason}
            cursor.execute(self._sql(_SET_ENABLED), params)
            return True

    def note_success(self, name: str) -> None:
        """See :meth:`QueueStore.note_success`."""
        with self._cursor(transaction=False) as cursor:
            cursor.execute(self._sql(_STREAK_END), {"name": name})

    def take_token(self, name: str, *, rate_per_s: float, burst: float) -> float:
        """See :meth:`QueueStore.take_token`."""
        now = self._clock()
        with self._cursor(transaction=True) as cursor:
            row = self._locked_target(cursor, _BUCKET, name)
            if row is None:
                return 0.0
            tokens, tokens_at = row
            if tokens is None or tokens_at is None:
                tokens, tokens_at = burst, now
            tokens = min(burst, tokens + max(0.0, now - tokens_at) * rate_per_s)
            wait_s = 0.0 if tokens >= 1 else (1 - tokens) / rate_per_s
            if not wait_s:
                tokens -= 1
            cursor.execute(self._sql(_BUCKET_SET), {"name": name, "tokens": tokens, "now": now})
            return wait_s

    # -- waking -----------------------------------------------------------------------

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        """See :meth:`QueueStore.subscribe`: enqueues through this object wake at once."""
        with self._listeners_lock:
            self._listeners.append(wake)

        def unsubscribe() -> None:
            with self._listeners_lock, contextlib.suppress(ValueError):
                self._listeners.remove(wake)

        return unsubscribe


def settle_params(settlement: Settlement, owner: str, now: float) -> dict[str, Any]:
    """The parameters of :data:`SETTLE_SQL` for one settlement by ``owner`` at ``now``."""
    return {
        "id": settlement.job_id,
        "owner": owner,
        "state": SETTLED_STATE[settlement.kind],
        "run_at": settlement.run_at,
        "counted": 0 if settlement.kind == "release" else 1,
        "error": settlement.error,
        "now": now,
    }


def _record_params(attempt: AttemptRecord) -> dict[str, Any]:
    return {
        "job_id": attempt.job_id,
        "number": attempt.number,
        "started_at": attempt.started_at,
        "latency_s": attempt.latency_s,
        "outcome": attempt.outcome,
        "status_code": attempt.status_code,
        "error": attempt.error,
        "detail": attempt.detail,
        "worker": attempt.worker,
    }
