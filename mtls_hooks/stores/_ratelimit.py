"""Rate limits per client identity: one token bucket per key, in memory or in a shared store.

A limit ``"N/period"`` is a token bucket of ``N`` tokens that refills at ``N`` per period: a
peer may send ``N`` requests at once, then one every ``period / N``. Every backend runs the
same arithmetic, the *generic cell rate algorithm* (GCRA, ITU-T I.371), which is that token
bucket written with one number per key, the *theoretical arrival time* ``tat``:

* ``interval = period / N`` and ``tau = (N - 1) * interval`` (the burst tolerance);
* at time ``now``, ``tat = max(tat, now)``; when ``tat - now > tau`` the request is refused
  and may come back in ``tat - now - tau`` seconds, otherwise it is admitted and
  ``tat += interval``.

One number per key means one atomic statement per request in PostgreSQL
(:class:`~mtls_hooks.stores._postgres.PostgresRateLimiter`) and one script in Redis
(:class:`~mtls_hooks.stores._redis.RedisRateLimiter`), shared by every worker and machine.
:class:`MemoryRateLimiter` keeps the buckets of one process.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

from mtls_hooks.core._errors import ConfigurationError

__all__ = ["MemoryRateLimiter", "Rate", "RateLimiter", "parse_rate"]

_UNITS: Final = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}
_RATE: Final = re.compile(r"\s*(\d+)\s*/\s*([a-z]+?)s?\s*")


@dataclass(frozen=True, slots=True)
class Rate:
    """A limit of ``count`` requests per ``period_s`` seconds, ``count`` of them at once.

    Attributes:
        count: the bucket size, and the requests admitted per period.
        period_s: the period in seconds.
    """

    count: int
    period_s: float

    @property
    def interval_s(self) -> float:
        """Seconds per token."""
        return self.period_s / self.count

    @property
    def tau_s(self) -> float:
        """The GCRA burst tolerance: how far ``tat`` may run ahead of now."""
        return (self.count - 1) * self.interval_s

    def __str__(self) -> str:
        return f"{self.count}/{self.period_s:g}s"


def parse_rate(value: object) -> Rate | None:
    """Parse ``"100/min"`` (units ``s``, ``min``, ``h``, ``day``), a :class:`Rate` or ``None``.

    Raises:
        ConfigurationError: any other value, or a count below one.
    """
    if value is None or isinstance(value, Rate):
        return value
    match = _RATE.fullmatch(value.lower()) if isinstance(value, str) else None
    if match is None or match.group(2) not in _UNITS:
        raise ConfigurationError(
            f"rate_limit {value!r} must look like '100/min' (per s, min, h or day)"
        )
    count = int(match.group(1))
    if count < 1:
        raise ConfigurationError(f"rate_limit {value!r} must allow at least one request")
    return Rate(count, _UNITS[match.group(2)])


@runtime_checkable
class RateLimiter(Protocol):
    """Where the token buckets live. Keys are opaque strings (a peer's SPKI pin, ...)."""

    async def acquire(self, key: str, rate: Rate) -> float:
        """Take one token from ``key``'s bucket.

        Returns:
            ``0.0`` when the request is admitted, else the seconds until it would be.

        Raises:
            StoreUnavailableError: a shared store cannot be reached.
        """
        ...

    async def aclose(self) -> None:
        """Release the limiter's resources."""
        ...


def gcra(tat: float | None, now: float, rate: Rate) -> tuple[float, float]:
    """One GCRA step: return ``(wait_s, new_tat)``; ``wait_s`` is 0 when admitted."""
    tat = now if tat is None or tat < now else tat
    wait_s = tat - now - rate.tau_s
    if wait_s > 0:
        return wait_s, tat
    return 0.0, tat + rate.interval_s


class MemoryRateLimiter:
    """Token buckets in this process: exact for one worker, per worker with several.

    At most ``max_keys`` buckets are kept; beyond it, full buckets are forgotten first (they
    hold nothing), then the least recently used one.
    """

    __slots__ = ("_clock", "_tats", "max_keys")

    def __init__(
        self, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Create an empty limiter.

        Args:
            max_keys: the bound on remembered buckets.
            clock: monotonic seconds; injected by tests.

        Raises:
            ConfigurationError: ``max_keys`` below one.
        """
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ConfigurationError("max_keys must be a positive integer")
        self.max_keys = max_keys
        self._clock = clock
        self._tats: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tats)

    async def acquire(self, key: str, rate: Rate) -> float:
        """Take one token; see :class:`RateLimiter`."""
        now = self._clock()
        tats = self._tats
        wait_s, tat = gcra(tats.get(key), now, rate)
        if wait_s:
            return wait_s
        tats[key] = tat
        tats.move_to_end(key)
        if len(tats) > self.max_keys:
            self._evict(now)
        return 0.0

    def _evict(self, now: float) -> None:
        tats = self._tats
        # The front is the least recently used; a bucket whose tat has passed is full again.
        for _ in range(32):
            oldest, tat = next(iter(tats.items()))
            if tat > now or len(tats) <= self.max_keys:
                break
            del tats[oldest]
        while len(tats) > self.max_keys:
            tats.popitem(last=False)

    async def aclose(self) -> None:
        """Forget every bucket."""
        self._tats.clear()


def retry_after_header(wait_s: float) -> str:
    """``Retry-After`` in whole seconds (RFC 9110 §10.2.3), rounded up, at least 1."""
    return str(max(1, math.ceil(wait_s)))
