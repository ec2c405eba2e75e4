"""The sender's retry policy, made of replaceable tenacity objects.

A failed try raises :class:`AttemptFailed`, which says whether a retry could help
(:attr:`AttemptFailed.retryable`) and what ``Retry-After`` the receiver asked for. The policy
is a :class:`RetryPolicy`: a tenacity ``stop``, ``wait`` and ``retry``, a per-attempt timeout
and a total deadline. Replace any part::

    policy = RetryPolicy.default().replace(
        stop=stop_after_attempt(3),
        wait=wait_retry_after(wait_backoff(initial_s=1, multiplier=2, max_s=30)),
    )

Classification follows the Standard Webhooks delivery guidance: 2xx is success; 408, 425, 429,
500, 502, 503 and 504 and connection failures and timeouts are retried; 3xx (never followed),
410 ("endpoint gone"), every other status and any certificate or pin failure are final.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from tenacity import RetryCallState, stop_after_attempt
from tenacity.retry import retry_base
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.sender._results import WaitReason

__all__ = [
    "RETRYABLE_STATUS_CODES",
    "AttemptFailed",
    "RetryPolicy",
    "parse_retry_after",
    "retry_if_retryable",
    "stop_before_deadline",
    "wait_backoff",
    "wait_retry_after",
]

#: Statuses worth another try: timeouts, "too early", throttling and transient server trouble.
RETRYABLE_STATUS_CODES: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
#: Retry-After beyond this is clamped: a receiver must not park a sender for days.
DEFAULT_MAX_RETRY_AFTER_S: Final = 3600.0


class AttemptFailed(Exception):
    """One try failed; raised inside the tenacity loop, translated to a DeliveryError after it.

    Attributes:
        retryable: whether another try could succeed.
        status_code: the receiver's status, ``None`` when no answer arrived.
        retry_after_s: seconds asked by the receiver's ``Retry-After`` (unclamped), if any.
        kind: a short code: ``"status"``, ``"redirect"``, ``"gone"``, ``"timeout"``,
            ``"connect"``, ``"transport"``, ``"tls"``, ``"url"`` (sent nothing).
        error: the class name of the underlying exception, ``None`` for a status.
        detail: what the attempt record shows: a body snippet, ``Retry-After``, the message.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        kind: str,
        status_code: int | None = None,
        retry_after_s: float | None = None,
        error: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.detail = message if detail is None else detail
        self.retryable = retryable
        self.kind = kind
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        self.error = error


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Parse a ``Retry-After`` header (RFC 9110 §10.2.3): delay-seconds or an HTTP-date.

    Args:
        value: the header value, or ``None``.
        now: the current wall-clock time (epoch seconds), to turn a date into a delay.

    Returns:
        The delay in seconds, at least 0 (a date in the past means "now"); ``None`` when the
        header is absent or unparseable, so the backoff schedule applies instead.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; "-0000" parses as naive
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - now)


def _failure(retry_state: RetryCallState) -> AttemptFailed | None:
    outcome = retry_state.outcome
    if outcome is None or not outcome.failed:
        return None
    exc = outcome.exception()
    return exc if isinstance(exc, AttemptFailed) else None


class retry_if_retryable(retry_base):
    """Retry exactly the tries that :class:`AttemptFailed` marks as retryable."""

    def __call__(self, retry_state: RetryCallState) -> bool:
        failure = _failure(retry_state)
        return failure is not None and failure.retryable


class wait_backoff(wait_base):
    """Exponential backoff with proportional jitter: ``initial_s * multiplier**(n-1)``, capped.

    The jitter spreads a fleet of senders that failed together (the thundering herd): each
    wait is scaled by a uniform factor in ``[1 - jitter, 1 + jitter]``.
    """

    def __init__(
        self,
        *,
        initial_s: float,
        multiplier: float,
        max_s: float,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        """Create the schedule.

        Args:
            initial_s: the first wait.
            multiplier: growth factor between waits.
            max_s: cap on a wait before jitter.
            jitter: fraction of each wait drawn at random, 0 for exact waits.
            rng: source of the jitter; seed one to reproduce a schedule.

        Raises:
            ConfigurationError: negative or non-finite numbers, or jitter outside [0, 1].
        """
        for name, number in (("initial_s", initial_s), ("multiplier", multiplier)):
            if not math.isfinite(number) or number < 0:
                raise ConfigurationError(f"{name} must be finite and >= 0, got {number!r}")
        if not 0 <= jitter <= 1:
            raise ConfigurationError(f"jitter must be within [0, 1], got {jitter!r}")
        if max_s < 0:
            raise ConfigurationError(f"max_s must be >= 0, got {max_s!r}")
        self.initial_s = initial_s
        self.multiplier = multiplier
        self.max_s = max_s
        self.jitter = jitter
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not a secret

    def __call__(self, retry_state: RetryCallState) -> float:
        exponent = max(0, retry_state.attempt_number - 1)
        try:
            base = min(self.max_s, self.initial_s * self.multiplier**exponent)
        except OverflowError:
            base = self.max_s
        if self.jitter:
            base *= self.rng.uniform(1 - self.jitter, 1 + self.jitter)
        return base


class wait_retry_after(wait_base):
    """Wait what the receiver's ``Retry-After`` asked, clamped; otherwise ``fallback``."""

    def __init__(self, fallback: wait_base, *, max_s: float = DEFAULT_MAX_RETRY_AFTER_S) -> None:
        """Honour ``Retry-After`` up to ``max_s`` seconds.

        Args:
            fallback: the wait when the receiver gave no usable ``Retry-After``.
            max_s: the clamp; a receiver asking for more waits this long.
        """
        self.fallback = fallback
        self.max_s = max_s

    def __call__(self, retry_state: RetryCallState) -> float:
        failure = _failure(retry_state)
        if failure is not None and failure.retry_after_s is not None:
            return min(failure.retry_after_s, self.max_s)
        return float(self.fallback(retry_state))

    def reason(self, retry_state: RetryCallState) -> WaitReason:
        """Say which rule chose the wait for ``retry_state``."""
        failure = _failure(retry_state)
        if failure is not None and failure.retry_after_s is not None:
            return "retry-after"
        return "backoff"


class stop_before_deadline(stop_base):
    """Stop when the next wait would end past ``deadline`` on the ``clock``.

    tenacity measures its own delays with ``time.monotonic``; this stop takes the clock as a
    parameter so tests can drive it with a fake one.
    """

    def __init__(self, deadline: float, clock: Callable[[], float]) -> None:
        """Stop at ``deadline``, a reading of ``clock``."""
        self.deadline = deadline
        self.clock = clock
        self.fired = False  # tells "deadline" from "attempt limit" in the final error

    def __call__(self, retry_state: RetryCallState) -> bool:
        upcoming = retry_state.upcoming_sleep or 0.0
        if self.clock() + upcoming > self.deadline:
            self.fired = True
        return self.fired


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long a sender retries. Every field is a replaceable tenacity object.

    Attributes:
        stop: a tenacity stop (``stop_after_attempt(8)``); the deadline is added to it.
        wait: a tenacity wait; :class:`wait_retry_after` around :class:`wait_backoff`.
        retry: a tenacity retry predicate over :class:`AttemptFailed`.
        attempt_timeout_s: bound on each whole try (connect, handshake, request, status
            line, headers and body), always capped by the time left before the deadline.
            The async twin bounds it with aiohttp's total timeout (asyncio's over httpx);
            the sync twin caps each blocking step of httpx by the try's time left, so a
            receiver trickling its answer a byte at a time cannot stretch either.
        deadline_s: bound on the whole delivery, tries and waits; ``None`` for no bound.
            No try outlives it, so a hostile receiver holds a caller no longer than the
            deadline (name resolution aside: the system resolver bounds it).
    """

    stop: stop_base = dataclasses.field(default_factory=lambda: stop_after_attempt(8))
    wait: wait_base = dataclasses.field(
        default_factory=lambda: wait_retry_after(
            wait_backoff(initial_s=5, multiplier=6, max_s=8 * 3600)
        )
    )
    retry: retry_base = dataclasses.field(default_factory=retry_if_retryable)
    attempt_timeout_s: float = 15.0
    deadline_s: float | None = 24 * 3600.0

    def __post_init__(self) -> None:
        if not self.attempt_timeout_s > 0:
            raise ConfigurationError("attempt_timeout_s must be > 0")
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ConfigurationError("deadline_s must be > 0 or None")

    @classmethod
    def default(cls, *, rng: random.Random | None = None) -> RetryPolicy:
        """The library's default: far-reaching, like Svix's schedule.

        Up to 8 tries within 24 h, waiting about 5 s, 30 s, 3 min, 18 min, 1.8 h, 8 h and
        8 h (±20 %), or the receiver's ``Retry-After`` up to 1 h.
        """
        return cls(
            wait=wait_retry_after(wait_backoff(initial_s=5, multiplier=6, max_s=8 * 3600, rng=rng))
        )

    @classmethod
    def interactive(cls, *, rng: random.Random | None = None) -> RetryPolicy:
        """The CLI's default, for a person at a terminal: done within about a minute.

        Up to 4 tries, waiting about 2 s, 6 s and 18 s (±20 %), or ``Retry-After`` up to 30 s,
        with a 60 s deadline.
        """
        return cls(
            stop=stop_after_attempt(4),
            wait=wait_retry_after(
                wait_backoff(initial_s=2, multiplier=3, max_s=20, rng=rng), max_s=30
            ),
            deadline_s=60.0,
        )

    def replace(self, **changes: Any) -> RetryPolicy:
        """Return a copy with some fields replaced (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def wait_reason(self, retry_state: RetryCallState) -> WaitReason:
        """Say whether ``Retry-After`` or the backoff chose the coming wait."""
        if isinstance(self.wait, wait_retry_after):
            return self.wait.reason(retry_state)
        return "backoff"
