"""The Redis dedupe store: fast and shared, but not the system of record.

The claim / complete / release protocol of :mod:`mtls_hooks.stores._replay` maps onto one
key per id, ``<namespace>:dedupe:<endpoint> <webhook-id>``:

* **claim**: ``SET key c:<token> NX PX <lease> GET`` (Redis >= 7.0). One round trip: the key
  is set, or its current value says whether the id is done or in flight. The key's own expiry
  is the lease, so an abandoned claim frees itself.
* **complete** and **release** are Lua scripts, atomic on the server, that act only while the
  key still holds this process's claim token: ``SET key d PX <retention>`` or ``DEL key``. A
  worker whose lease ran out cannot mark done, or free, a claim another node now holds.

Expiry is Redis's own (no sweep is needed) and its clock is the only one that counts.

What Redis can lose: with ``appendfsync everysec`` (the usual setting) a crash loses up to
about a second of acknowledged writes, and a replica promoted after a failover lacks what the
primary had not yet sent it (replication is asynchronous). A lost claim or done mark means a
retry runs its handler again: use Redis where handlers are idempotent anyway and speed
matters, and PostgreSQL where a duplicate run costs money.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Sequence
from typing import Any, Final

import redis.asyncio as aioredis
import redis.exceptions

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.queue._protocol import StoreUnavailableError
from mtls_hooks.stores._batch import Batcher
from mtls_hooks.stores._names import check_namespace, one_line, redact_url
from mtls_hooks.stores._ratelimit import Rate
from mtls_hooks.stores._replay import (
    DEFAULT_LEASE_S,
    DEFAULT_RETENTION_S,
    ClaimState,
    _check_windows,
)

__all__ = ["RedisDedupeStore", "RedisRateLimiter"]

_DONE: Final = b"d"
# KEYS[1] the id's key; ARGV[1] the claim value; ARGV[2] the retention in ms.
_COMPLETE_LUA: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], 'd', 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE_LUA: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
_REDIS_ERRORS: Final = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisDedupeStore:
    """A dedupe store in Redis (``redis.asyncio``), shared by every worker and machine.

    Redis persistence can drop the last second of writes, or more after a failover to an
    asynchronous replica: a dropped record lets a retry run its handler again. Prefer
    :class:`~mtls_hooks.stores._postgres.PostgresDedupeStore` where a second run is costly.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "mtls_hooks",
        retention_s: float = DEFAULT_RETENTION_S,
        lease_s: float = DEFAULT_LEASE_S,
        timeout_s: float = 5.0,
        max_connections: int = 50,
    ) -> None:
        """Describe the store; nothing connects until :meth:`check` or first use.

        Args:
            url: ``redis://[user:password@]host:6379/0`` or ``rediss://`` for TLS.
            namespace: the key prefix (``<namespace>:``): one per deployment, or per test.
            retention_s: how long a processed id is remembered.
            lease_s: how long a claim without ``complete``/``release`` blocks the id.
            timeout_s: connect and command timeout; past it the store is unavailable and the
                receiver answers 503.
            max_connections: the pool bound of this process.

        Raises:
            ConfigurationError: invalid windows, namespace or URL.
        """
        self.retention_s, self.lease_s = _check_windows(retention_s, lease_s)
        self.namespace = check_namespace(namespace)
        self.prefix = f"{self.namespace}:dedupe:"
        self.url = url
        self._where = redact_url(url)
        self._timeout_s = timeout_s
        self._lease_ms = _ms(self.lease_s)
        self._retention_ms = _ms(self.retention_s)
        try:
            # A blocking pool: at its bound a command waits (up to timeout_s) for a free
            # connection instead of failing with "Too many connections".
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                max_connections=max_connections,
                timeout=timeout_s,
            )
            self._client: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        except ValueError as exc:
            raise ConfigurationError(f"dedupe store URL {self._where}: {exc}") from exc
        self._complete = self._client.register_script(_COMPLETE_LUA)
        self._release = self._client.register_script(_RELEASE_LUA)
        # This process's claim value per key; complete/release act only on a key bearing it.
        self._tokens: dict[str, bytes] = {}
        self._claims_batch = Batcher(self._claim_many, orphaned=self._claim_orphaned)
        self._background: set[asyncio.Task[None]] = set()
        self._completes_batch = Batcher(self._complete_many)

    def __repr__(self) -> str:
        return f"RedisDedupeStore({self._where!r}, prefix={self.prefix!r})"

    @property
    def client(self) -> aioredis.Redis:
        """The ``redis.asyncio`` client (shared with the rate limiter)."""
        return self._client

    def check(self) -> None:
        """Connect once, synchronously, and check the server's version: the start-up check.

        Raises:
            StoreUnavailableError: Redis cannot be reached, or is older than 7.0 (which
                ``SET ... NX GET`` needs).
        """
        import redis as sync_redis

        try:
            client = sync_redis.Redis.from_url(
                self.url, socket_timeout=self._timeout_s, socket_connect_timeout=self._timeout_s
            )
            try:
                version = str(client.info("server").get("redis_version", "0"))
            finally:
                client.close()
        except redis.exceptions.RedisError as exc:
            raise StoreUnavailableError(
                f"dedupe store {self._where} is unreachable: {one_line(exc)}"
            ) from exc
        if int(version.split(".", maxsplit=1)[0]) < 7:
            raise StoreUnavailableError(
                f"dedupe store {self._where} runs Redis {version}; 7.0 or newer is needed"
            )

    async def _call(self, call: Any) -> Any:
        try:
            return await call
        except _REDIS_ERRORS as exc:
            raise StoreUnavailableError(
                f"dedupe store {self._where} failed: {one_line(exc)}"
            ) from exc

    async def claim(self, key: str) -> ClaimState:
        """Claim ``key``; see :class:`~mtls_hooks.stores._replay.DedupeStore`.

        Claims that arrive together share one pipelined round trip (see ``_batch.py``).

        Raises:
            StoreUnavailableError: Redis cannot be reached.
        """
        token = b"c:%x" % secrets.randbits(63)
        previous = await self._claims_batch.submit((key, token))
        if previous is None:
            self._tokens[key] = token
            return ClaimState.CLAIMED
        return ClaimState.DONE if previous == _DONE else ClaimState.IN_FLIGHT

    async def _claim_many(self, items: Sequence[tuple[str, bytes]]) -> list[bytes | None]:
        # Each SET ... NX GET is atomic on its own; a twin of a key later in the same
        # pipeline reads the first one's claim and answers in flight.
        pipe = self._client.pipeline(transaction=False)
        for key, token in items:
            pipe.set(self.prefix + key, token, nx=True, px=self._lease_ms, get=True)
        return list(await self._call(pipe.execute()))

    def _claim_orphaned(self, item: tuple[str, bytes], previous: bytes | None) -> None:
        # The caller was cancelled (its sender hung up) while its claim was on the way: free
        # the id now rather than leave it blocked until the lease ends.
        if previous is None:
            key, token = item
            self._tokens[key] = token
            task = asyncio.get_running_loop().create_task(self.release(key))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def complete(self, key: str) -> None:
        """Mark ``key`` done if this process still holds its claim.

        Raises:
            StoreUnavailableError: Redis cannot be reached.
        """
        token = self._tokens.pop(key, None)
        if token is not None:
            await self._completes_batch.submit((key, token))

    async def _complete_many(self, items: Sequence[tuple[str, bytes]]) -> list[None]:
        pipe = self._client.pipeline(transaction=False)
        for key, token in items:
            await self._complete(
                keys=[self.prefix + key], args=[token, self._retention_ms], client=pipe
            )
        await self._call(pipe.execute())
        return [None] * len(items)

    async def release(self, key: str) -> None:
        """Drop this process's unfinished claim on ``key``.

        Raises:
            StoreUnavailableError: Redis cannot be reached.
        """
        token = self._tokens.pop(key, None)
        if token is not None:
            await self._call(self._release(keys=[self.prefix + key], args=[token]))

    def rate_limiter(self, *, clock: Callable[[], float] | None = None) -> RedisRateLimiter:
        """Return token buckets kept in this Redis, on this store's client.

        Args:
            clock: wall-clock seconds replacing Redis's clock; for tests.
        """
        return RedisRateLimiter(self, clock=clock)

    async def aclose(self) -> None:
        """Close the client's connections. Idempotent."""
        await self._claims_batch.aclose()
        await self._completes_batch.aclose()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self._client.aclose()
        await self._client.connection_pool.disconnect()


# KEYS[1] the bucket; ARGV: now (negative: use Redis's clock), interval, tau (seconds).
# Returns the wait in seconds as a string ("0": admitted); Lua numbers would be truncated.
_GCRA_LUA: Final = """
local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local interval = tonumber(ARGV[2])
local tau = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now - tau
if wait > 0 then return tostring(wait) end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1)
return '0'
"""


class RedisRateLimiter:
    """Token buckets (GCRA) under ``<namespace>:rate:``, shared by every worker and machine.

    One script call per request, on the dedupe store's client; times are Redis's clock
    unless a ``clock`` is injected (tests).
    """

    def __init__(
        self, store: RedisDedupeStore, *, clock: Callable[[], float] | None = None
    ) -> None:
        """Keep buckets beside ``store``'s keys, through its client."""
        self._store = store
        self._prefix = f"{store.namespace}:rate:"
        self._clock = clock
        self._script = store.client.register_script(_GCRA_LUA)

    async def acquire(self, key: str, rate: Rate) -> float:
        """Take one token; see :class:`~mtls_hooks.stores._ratelimit.RateLimiter`.

        Raises:
            StoreUnavailableError: Redis cannot be reached.
        """
        now = -1.0 if self._clock is None else float(self._clock())
        answer = await self._store._call(
            self._script(keys=[self._prefix + key], args=[repr(now), rate.interval_s, rate.tau_s])
        )
        return float(answer)

    async def aclose(self) -> None:
        """Nothing of its own to close: the client is the store's."""
