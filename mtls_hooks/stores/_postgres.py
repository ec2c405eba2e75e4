"""The PostgreSQL dedupe store: the authoritative store when receivers run on several machines.

One row per ``(endpoint, webhook_id)``, unique, in one table (``<namespace>_dedupe``). The
claim / complete / release protocol of :mod:`mtls_hooks.stores._replay` maps onto it as:

* **claim**: one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` statement inserts the id, or
  takes over a row whose lease or retention ended; a live row is left alone and read back as
  done or in flight. The statement is atomic across connections, processes and machines
  (PostgreSQL's unique index arbitrates), and it stamps the row with a random claim token.
  The claims that arrive during one event-loop turn share the statement (``unnest`` of
  arrays, keys sorted so that nodes lock rows in one order), and so do the completions: the
  driver's cost is paid per batch, not per request (:mod:`mtls_hooks.stores._batch`).
* **complete** / **release** update or delete the row only while it still carries that token:
  a worker whose lease ran out and whose id another node took over cannot mark it done or
  free it.

Times are PostgreSQL's own clock (``statement_timestamp()``), so the nodes' clocks need not
agree; an injected ``clock`` replaces it for tests. Expired rows are swept in the background
in batches of :data:`SWEEP_BATCH` (``FOR UPDATE SKIP LOCKED``, so nodes sweeping at once do
not wait on each other), never on a request's path.

**Effects committed with the dedupe record**: :meth:`PostgresDedupeStore.transactional` wraps a
handler so that it receives a connection inside a transaction that also marks its id done.
The handler's writes and the done mark commit together or not at all: a handler that raises
leaves neither, and the sender's retry runs it again; one that commits is never run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any, Final, Protocol, TypeVar

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.queue._protocol import StoreUnavailableError
from mtls_hooks.stores._batch import Batcher
from mtls_hooks.stores._names import PG_NOW_SQL, check_namespace, one_line, redact_url, split_key
from mtls_hooks.stores._ratelimit import RateLimiter
from mtls_hooks.stores._replay import (
    DEFAULT_LEASE_S,
    DEFAULT_RETENTION_S,
    ClaimState,
    _check_windows,
)

__all__ = ["SWEEP_BATCH", "PostgresDedupeStore"]

logger = logging.getLogger("mtls_hooks.stores")

SWEEP_BATCH: Final = 1000
# A background sweep is started after this many claims (per process), and deletes at most
# _SWEEP_MAX_BATCHES batches: bounded work, spread over time.
_SWEEP_EVERY: Final = 1000
_SWEEP_MAX_BATCHES: Final = 10

_R = TypeVar("_R")


class _Keyed(Protocol):
    """What :meth:`PostgresDedupeStore.transactional` reads of an event."""

    @property
    def id(self) -> str: ...

    @property
    def endpoint(self) -> str: ...


_E = TypeVar("_E", bound=_Keyed)


class _LeaseLostError(Exception):
    """The id's claim token changed under a transactional handler: another node took it."""


def _statements(table: str) -> dict[str, sql.Composed]:
    t = sql.Identifier(table)
    now = sql.SQL(PG_NOW_SQL.format(now="%(now)s"))
    return {
        # CREATE ... IF NOT EXISTS is not safe against itself: two processes creating the
        # table at once can fail on pg_type's unique index. An advisory lock serialises them.
        "schema": sql.SQL(
            "BEGIN; SELECT pg_advisory_xact_lock(hashtext({name}));"
            " CREATE TABLE IF NOT EXISTS {t} ("
            " endpoint text NOT NULL, webhook_id text NOT NULL, done boolean NOT NULL,"
            " token bigint NOT NULL, expires_at float8 NOT NULL,"
            " PRIMARY KEY (endpoint, webhook_id));"
            " CREATE INDEX IF NOT EXISTS {index} ON {t} (expires_at); COMMIT"
        ).format(t=t, name=sql.Literal(table), index=sql.Identifier(f"{table}_expiry")),
        # excluded.expires_at - lease is "now" again: one clock reading per statement.
        # Batches (see _batch.py): one statement for the claims that arrived meanwhile, keys
        # sorted so that nodes inserting overlapping batches lock rows in the same order.
        "claim_many": sql.SQL(
            "INSERT INTO {t} AS d (endpoint, webhook_id, done, token, expires_at)"
            " SELECT e, i, false, k, {now} + %(lease)s"
            " FROM unnest(%(endpoints)s::text[], %(ids)s::text[], %(tokens)s::int8[]) AS u(e, i, k)"
            " ORDER BY e, i"
            " ON CONFLICT (endpoint, webhook_id) DO UPDATE"
            " SET done = false, token = excluded.token, expires_at = excluded.expires_at"
            " WHERE d.expires_at <= excluded.expires_at - %(lease)s"
            " RETURNING endpoint, webhook_id"
        ).format(t=t, now=now),
        "state_many": sql.SQL(
            "SELECT endpoint, webhook_id, done FROM {t}"
            " WHERE (endpoint, webhook_id) IN"
            " (SELECT * FROM unnest(%(endpoints)s::text[], %(ids)s::text[]))"
        ).format(t=t),
        "complete_many": sql.SQL(
            "UPDATE {t} AS d SET done = true, expires_at = {now} + %(retention)s"
            " FROM unnest(%(endpoints)s::text[], %(ids)s::text[], %(tokens)s::int8[]) AS u(e, i, k)"
            " WHERE d.endpoint = u.e AND d.webhook_id = u.i AND d.token = u.k"
        ).format(t=t, now=now),
        "complete": sql.SQL(
            "UPDATE {t} SET done = true, expires_at = {now} + %(retention)s"
            " WHERE endpoint = %(endpoint)s AND webhook_id = %(id)s AND token = %(token)s"
        ).format(t=t, now=now),
        "release": sql.SQL(
            "DELETE FROM {t} WHERE endpoint = %(endpoint)s AND webhook_id = %(id)s"
            " AND token = %(token)s AND NOT done"
        ).format(t=t),
        "sweep": sql.SQL(
            "DELETE FROM {t} WHERE ctid IN (SELECT ctid FROM {t} WHERE expires_at <= {now}"
            " LIMIT %(batch)s FOR UPDATE SKIP LOCKED)"
        ).format(t=t, now=now),
    }


class PostgresDedupeStore:
    """A dedupe store in PostgreSQL, shared by every worker and machine (psycopg 3, a pool).

    Connections come from an :class:`psycopg_pool.AsyncConnectionPool` opened on first use in
    the serving event loop, in autocommit mode: each protocol step is one statement, one round
    trip (a claim of an id that is done or in flight adds a second, to tell which). Statements
    are prepared by the server after their first use on a connection unless ``prepare`` is
    False (needed behind PgBouncer in transaction mode).
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "mtls_hooks",
        retention_s: float = DEFAULT_RETENTION_S,
        lease_s: float = DEFAULT_LEASE_S,
        pool_max_size: int = 20,
        timeout_s: float = 5.0,
        prepare: bool = True,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """Describe the store; nothing connects until :meth:`check` or first use.

        Args:
            url: a libpq URL, ``postgresql://user@host:5432/dbname``.
            namespace: the table is ``<namespace>_dedupe`` (and ``<namespace>_rate`` for rate
                limits): give each deployment, or each test, its own.
            retention_s: how long a processed id is remembered.
            lease_s: how long a claim without ``complete``/``release`` blocks the id.
            pool_max_size: the most connections this process opens.
            timeout_s: how long a statement may wait for a connection (then the store is
                unavailable: the receiver answers 503) and the connect timeout.
            prepare: let the server prepare the statements (not behind PgBouncer's
                transaction mode).
            clock: wall-clock seconds replacing the database's clock; for tests.

        Raises:
            ConfigurationError: invalid windows, namespace or pool size.
        """
        self.retention_s, self.lease_s = _check_windows(retention_s, lease_s)
        if isinstance(pool_max_size, bool) or not isinstance(pool_max_size, int):
            raise ConfigurationError("pool_max_size must be a positive integer")
        if pool_max_size < 1:
            raise ConfigurationError("pool_max_size must be a positive integer")
        self.namespace = check_namespace(namespace)
        self.table = f"{self.namespace}_dedupe"
        self.url = url
        self._where = redact_url(url)
        self._pool_max_size = pool_max_size
        self._timeout_s = timeout_s
        self._prepare = prepare
        self._clock = clock
        # Rendered once: psycopg would compose a Composed object again on every execute.
        self._sql = {name: query.as_bytes(None) for name, query in _statements(self.table).items()}
        self._pool: AsyncConnectionPool | None = None
        self._opening: asyncio.Lock | None = None
        # This process's claim token per key; complete/release act only on a row bearing it.
        self._tokens: dict[str, int] = {}
        self._claims = 0
        self._claims_batch = Batcher(self._claim_many, orphaned=self._claim_orphaned)
        self._completes_batch = Batcher(self._complete_many)
        self._sweeping: asyncio.Task[int] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"PostgresDedupeStore({self._where!r}, table={self.table!r})"

    def _now(self) -> float | None:
        clock = self._clock
        return None if clock is None else clock()

    def _connect_kwargs(self) -> dict[str, Any]:
        return {
            "autocommit": True,
            "prepare_threshold": 0 if self._prepare else None,
            "connect_timeout": max(1, round(self._timeout_s)),
        }

    def check(self) -> None:
        """Connect once, synchronously, and create the table: the start-up check.

        Raises:
            StoreUnavailableError: the database cannot be reached or used (one line, with the
                URL's password hidden).
        """
        try:
            with psycopg.connect(self.url, **self._connect_kwargs()) as conn:
                conn.execute(self._sql["schema"], prepare=False)
        except psycopg.Error as exc:
            raise StoreUnavailableError(
                f"dedupe store {self._where} is unreachable: {one_line(exc)}"
            ) from exc

    async def _open(self) -> AsyncConnectionPool:
        if self._closed:
            raise RuntimeError("PostgresDedupeStore is closed")
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is not None:
                return self._pool
            pool = AsyncConnectionPool(
                self.url,
                min_size=1,
                max_size=self._pool_max_size,
                kwargs=self._connect_kwargs(),
                timeout=self._timeout_s,
                open=False,
                name=f"mtls-hooks-{self.table}",
            )
            await pool.open(wait=False)
            try:
                async with pool.connection() as conn:
                    await conn.execute(self._sql["schema"], prepare=False)
            except BaseException:
                await pool.close()
                raise
            self._pool = pool
            return pool

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection; driver and pool failures become StoreUnavailableError."""
        try:
            pool = self._pool or await self._open()
            async with pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise StoreUnavailableError(
                f"dedupe store {self._where}: no connection within {self._timeout_s:g} s"
            ) from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise StoreUnavailableError(
                f"dedupe store {self._where} failed: {one_line(exc)}"
            ) from exc

    async def _execute(self, name: str, params: dict[str, Any]) -> psycopg.AsyncCursor[Any]:
        try:
            pool = self._pool or await self._open()
            async with pool.connection() as conn:
                return await conn.execute(self._sql[name], params)
        except PoolTimeout as exc:
            raise StoreUnavailableError(
                f"dedupe store {self._where}: no connection within {self._timeout_s:g} s"
            ) from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise StoreUnavailableError(
                f"dedupe store {self._where} failed: {one_line(exc)}"
            ) from exc

    async def claim(self, key: str) -> ClaimState:
        """Claim ``key``; see :class:`~mtls_hooks.stores._replay.DedupeStore`.

        Claims that arrive together go to the database in one statement (see ``_batch.py``).

        Raises:
            StoreUnavailableError: the database cannot be reached.
        """
        token = secrets.randbits(63)
        state = await self._claims_batch.submit((key, token))
        if state is ClaimState.CLAIMED:
            self._tokens[key] = token
            self._claimed()
        return state

    async def _claim_many(self, items: Sequence[tuple[str, int]]) -> list[ClaimState]:
        # One row per key: a statement cannot insert a key twice (the later twin reads as
        # in flight, as it would a moment after the first claim).
        firsts = dict(reversed(items))
        keys = sorted(firsts)
        split = [split_key(key) for key in keys]
        params = {
            "endpoints": [endpoint for endpoint, _ in split],
            "ids": [webhook_id for _, webhook_id in split],
            "tokens": [firsts[key] for key in keys],
            "lease": self.lease_s,
            "now": self._now(),
        }
        states: dict[str, ClaimState] = {}
        async with self._connection() as conn:
            cursor = await conn.execute(self._sql["claim_many"], params)
            for endpoint, webhook_id in await cursor.fetchall():
                states[f"{endpoint} {webhook_id}"] = ClaimState.CLAIMED
            if len(states) < len(keys):
                cursor = await conn.execute(self._sql["state_many"], params)
                for endpoint, webhook_id, done in await cursor.fetchall():
                    key = f"{endpoint} {webhook_id}"
                    states.setdefault(key, ClaimState.DONE if done else ClaimState.IN_FLIGHT)
        answers: list[ClaimState] = []
        for key, token in items:
            # A row swept or released between the two statements reads as in flight: the
            # sender retries shortly and then claims it.
            state = states.get(key, ClaimState.IN_FLIGHT)
            if state is ClaimState.CLAIMED and token != firsts[key]:
                state = ClaimState.IN_FLIGHT
            answers.append(state)
        return answers

    def _claim_orphaned(self, item: tuple[str, int], state: ClaimState) -> None:
        # The caller was cancelled (its sender hung up) while its claim was on the way: free
        # the id now rather than leave it blocked until the lease ends.
        if state is ClaimState.CLAIMED:
            key, token = item
            self._tokens[key] = token
            self._spawn(self.release(key))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def complete(self, key: str) -> None:
        """Mark ``key`` done if this process still holds its claim.

        Raises:
            StoreUnavailableError: the database cannot be reached.
        """
        token = self._tokens.pop(key, None)
        if token is None:
            return  # not ours (never claimed here, or settled inside a transaction)
        await self._completes_batch.submit((key, token))

    async def _complete_many(self, items: Sequence[tuple[str, int]]) -> list[None]:
        split = [split_key(key) for key, _ in items]
        params = {
            "endpoints": [endpoint for endpoint, _ in split],
            "ids": [webhook_id for _, webhook_id in split],
            "tokens": [token for _, token in items],
            "retention": self.retention_s,
            "now": self._now(),
        }
        async with self._connection() as conn:
            await conn.execute(self._sql["complete_many"], params)
        return [None] * len(items)

    async def release(self, key: str) -> None:
        """Drop this process's unfinished claim on ``key``.

        Raises:
            StoreUnavailableError: the database cannot be reached.
        """
        token = self._tokens.pop(key, None)
        if token is None:
            return
        endpoint, webhook_id = split_key(key)
        await self._execute("release", {"endpoint": endpoint, "id": webhook_id, "token": token})

    def _claimed(self) -> None:
        self._claims += 1
        if self._claims % _SWEEP_EVERY == 0 and (self._sweeping is None or self._sweeping.done()):
            self._sweeping = asyncio.get_running_loop().create_task(self._background_sweep())

    async def _background_sweep(self) -> int:
        try:
            return await self.sweep()
        except Exception:
            logger.exception("sweeping expired ids from %s failed", self.table)
            return 0

    async def sweep(self, *, max_batches: int = _SWEEP_MAX_BATCHES) -> int:
        """Delete expired ids, at most ``max_batches`` batches of :data:`SWEEP_BATCH`.

        Returns:
            How many rows were deleted.

        Raises:
            StoreUnavailableError: the database cannot be reached.
        """
        deleted = 0
        for _ in range(max_batches):
            cursor = await self._execute("sweep", {"batch": SWEEP_BATCH, "now": self._now()})
            deleted += cursor.rowcount
            if cursor.rowcount < SWEEP_BATCH:
                break
        return deleted

    def transactional(
        self, handler: Callable[[_E, psycopg.AsyncConnection[Any]], Awaitable[_R]]
    ) -> Callable[[_E], Awaitable[_R]]:
        """Run ``handler`` in a transaction that also marks its webhook id done.

        The wrapped handler takes the event and an :class:`psycopg.AsyncConnection` inside an
        open transaction: its writes and the id's done mark commit together when it returns,
        and roll back together when it raises. Register the result as a handler::

            @hooks.on("invoice.paid")
            @store.transactional
            async def paid(event: WebhookEvent, conn: psycopg.AsyncConnection) -> None:
                await conn.execute("INSERT INTO ledger VALUES (%s)", (event.id,))

        The done mark is written first, so the row stays locked while the handler runs: a node
        that takes the id over after the lease waits for this transaction, then sees it done.

        Raises:
            StoreUnavailableError: (from the wrapped handler) the database cannot be reached,
                or this process no longer holds the id's claim (its lease ended and another
                node took it); nothing was committed.
        """

        @functools.wraps(handler)
        async def run(event: _E) -> _R:
            key = f"{event.endpoint} {event.id}"
            token = self._tokens.get(key)
            if token is None:
                raise StoreUnavailableError(f"webhook {event.id} is not claimed by this process")
            pool = self._pool or await self._open()
            params = {
                "endpoint": event.endpoint,
                "id": event.id,
                "token": token,
                "retention": self.retention_s,
                "now": self._now(),
            }
            try:
                async with pool.connection() as conn, conn.transaction():
                    marked = await conn.execute(self._sql["complete"], params)
                    if marked.rowcount != 1:
                        raise _LeaseLostError
                    result = await handler(event, conn)
            except _LeaseLostError:
                self._tokens.pop(key, None)
                raise StoreUnavailableError(
                    f"the claim on webhook {event.id} was lost (its lease ended); "
                    "nothing was committed"
                ) from None
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                raise StoreUnavailableError(
                    f"dedupe store {self._where} failed: {one_line(exc)}"
                ) from exc
            # Committed: the row is done, so the receiver's complete() has nothing to do.
            self._tokens.pop(key, None)
            return result

        return run

    @property
    def pool(self) -> AsyncConnectionPool | None:
        """The connection pool, once opened (shared with the rate limiter)."""
        return self._pool

    async def connection_pool(self) -> AsyncConnectionPool:
        """Return the pool, opening it if needed.

        Raises:
            RuntimeError: the store is closed.
            psycopg.Error: the pool could not be opened.
        """
        return self._pool or await self._open()

    def rate_limiter(self) -> RateLimiter:
        """Return token buckets kept in this database, on this store's pool and clock."""
        from mtls_hooks.stores._postgres_rate import PostgresRateLimiter

        return PostgresRateLimiter(
            self.connection_pool, namespace=self.namespace, now=self._now, where=self._where
        )

    async def aclose(self) -> None:
        """Close the pool; running sweeps are cancelled. Idempotent."""
        self._closed = True
        await self._claims_batch.aclose()
        await self._completes_batch.aclose()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        sweeping, self._sweeping = self._sweeping, None
        if sweeping is not None and not sweeping.done():
            sweeping.cancel()
            await asyncio.gather(sweeping, return_exceptions=True)
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
