"""When a failed handler runs again, and when an inbox event goes to the dead letter.

:class:`InboxRetry` is two replaceable tenacity objects, as the sender's policy is: ``stop``
(by default 20 attempts, about 2 h 32 min of waits between them) and ``wait`` (exponential
backoff with jitter, 1 s doubling to a 15 min cap). A handler that raises is retried under
it; one that has used its attempts is dead-lettered (``failed``), where
``mtls-hooks inbox retry`` replays it. Nothing sleeps: the wait becomes the job's next
``run_at`` (``queue/_schedule``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from tenacity import stop_after_attempt, wait_exponential_jitter
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.queue._protocol import Job
from mtls_hooks.queue._schedule import attempt_state

__all__ = ["InboxDecision", "InboxRetry"]

DEFAULT_MAX_ATTEMPTS = 20
DEFAULT_MAX_WAIT_S = 900.0


class InboxDecision(NamedTuple):
    """``retry`` after ``wait_s``, or ``failed`` (the dead letter), with the reason."""

    kind: Literal["retry", "failed"]
    wait_s: float
    reason: str


@dataclass(frozen=True, slots=True)
class InboxRetry:
    """How the inbox retries a handler that raised.

    Example::

        InboxRetry(stop=stop_after_attempt(5) | stop_after_delay(3600),
                   wait=wait_exponential_jitter(initial=2, max=300))

    Attributes:
        stop: tenacity stop condition, judged after each failed attempt (``stop_after_delay``
            counts from the webhook's arrival in the inbox).
        wait: tenacity wait strategy: the delay before the next attempt.
    """

    stop: stop_base = field(default_factory=lambda: stop_after_attempt(DEFAULT_MAX_ATTEMPTS))
    wait: wait_base = field(
        default_factory=lambda: wait_exponential_jitter(initial=1, max=DEFAULT_MAX_WAIT_S)
    )

    @classmethod
    def of(cls, *, max_attempts: int, max_wait_s: float) -> InboxRetry:
        """The default shape with another attempt limit and backoff cap.

        Raises:
            ConfigurationError: ``max_attempts`` < 1 or ``max_wait_s`` not > 0.
        """
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigurationError(f"inbox max_attempts must be >= 1, got {max_attempts!r}")
        if isinstance(max_wait_s, bool) or not isinstance(max_wait_s, int | float):
            raise ConfigurationError(f"inbox max_wait_s must be a number, got {max_wait_s!r}")
        if not 0 < max_wait_s < float("inf"):
            raise ConfigurationError(f"inbox max_wait_s must be > 0, got {max_wait_s!r}")
        return cls(
            stop=stop_after_attempt(max_attempts),
            wait=wait_exponential_jitter(initial=min(1.0, max_wait_s), max=max_wait_s),
        )

    def decide(self, job: Job, error: BaseException, *, now: float) -> InboxDecision:
        """Judge the failure of ``job``'s attempt number ``job.attempts + 1`` at ``now``."""
        state = attempt_state(job, error, now=now)
        reason = f"{type(error).__name__}: {error}"[:500]
        if self.stop(state):
            return InboxDecision(
                "failed", 0.0, f"gave up after {state.attempt_number} attempt(s): {reason}"
            )
        return InboxDecision("retry", max(0.0, float(self.wait(state))), reason)
