"""Token buckets (GCRA, see :mod:`mtls_hooks.stores._ratelimit`) in PostgreSQL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from mtls_hooks.queue._protocol import StoreUnavailableError
from mtls_hooks.stores._names import PG_NOW_SQL, one_line
from mtls_hooks.stores._ratelimit import Rate

__all__ = ["PostgresRateLimiter"]


class PostgresRateLimiter:
    """Token buckets (GCRA) in ``<namespace>_rate``, shared by every worker and machine.

    Uses the dedupe store's pool and clock: an admitted request is one statement; a refused
    one a second, to read how long the peer must wait.
    """

    def __init__(
        self,
        pool: Callable[[], Awaitable[AsyncConnectionPool]],
        *,
        namespace: str,
        now: Callable[[], float | None],
        where: str,
    ) -> None:
        """Keep buckets in ``<namespace>_rate``, through the dedupe store's pool and clock.

        Args:
            pool: returns the (opened) connection pool.
            namespace: the table prefix.
            now: the injected clock's reading, or ``None`` for the database's clock.
            where: the store's URL without its password, for errors.
        """
        self._pool = pool
        self._now = now
        self._where = where
        t = sql.Identifier(f"{namespace}_rate")
        now_sql = sql.SQL(PG_NOW_SQL.format(now="%(now)s"))
        self._schema = (
            # Serialised as the dedupe table's creation is (see there).
            sql.SQL(
                "BEGIN; SELECT pg_advisory_xact_lock(hashtext({name}));"
                " CREATE TABLE IF NOT EXISTS {t} (key text PRIMARY KEY, tat float8 NOT NULL);"
                " COMMIT"
            )
            .format(t=t, name=sql.Literal(f"{namespace}_rate"))
            .as_bytes(None)
        )
        # excluded.tat - interval is "now": one clock reading per statement.
        self._take = (
            sql.SQL(
                "INSERT INTO {t} AS b (key, tat) VALUES (%(key)s, {now} + %(interval)s)"
                " ON CONFLICT (key) DO UPDATE"
                " SET tat = GREATEST(b.tat, excluded.tat - %(interval)s) + %(interval)s"
                " WHERE GREATEST(b.tat, excluded.tat - %(interval)s)"
                " - (excluded.tat - %(interval)s) <= %(tau)s"
                " RETURNING 1"
            )
            .format(t=t, now=now_sql)
            .as_bytes(None)
        )
        self._wait = (
            sql.SQL("SELECT tat - {now} - %(tau)s FROM {t} WHERE key = %(key)s")
            .format(t=t, now=now_sql)
            .as_bytes(None)
        )
        self._ready = False

    async def acquire(self, key: str, rate: Rate) -> float:
        """Take one token; see :class:`~mtls_hooks.stores._ratelimit.RateLimiter`.

        Raises:
            StoreUnavailableError: the database cannot be reached.
        """
        params = {"key": key, "interval": rate.interval_s, "tau": rate.tau_s, "now": self._now()}
        try:
            pool = await self._pool()
            async with pool.connection() as conn:
                if not self._ready:
                    await conn.execute(self._schema, prepare=False)
                    self._ready = True
                if (await conn.execute(self._take, params)).rowcount == 1:
                    return 0.0
                row = await (await conn.execute(self._wait, params)).fetchone()
        except PoolTimeout as exc:
            raise StoreUnavailableError(f"rate-limit store {self._where}: no connection") from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise StoreUnavailableError(
                f"rate-limit store {self._where} failed: {one_line(exc)}"
            ) from exc
        # Refilled between the two statements: come back after one interval.
        return float(row[0]) if row is not None and row[0] > 0 else rate.interval_s

    async def aclose(self) -> None:
        """Nothing of its own to close: the pool is the store's."""
