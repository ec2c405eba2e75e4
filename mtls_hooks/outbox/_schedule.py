"""What a worker does after one failed attempt: retry at a time, or dead-letter, and why.

The endpoint's :class:`~mtls_hooks.RetryPolicy` decides, exactly as it does inside a
sender's tenacity loop: ``retry`` (is the failure worth another try: a 410, a certificate or
pin failure are not), ``wait`` (backoff, or the receiver's ``Retry-After``) and ``stop``
(attempt limit), plus its deadline counted from the enqueue. The difference is that nothing
sleeps: the wait becomes the job's next ``run_at`` and the row goes back to the queue.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from mtls_hooks.queue._protocol import Job
from mtls_hooks.queue._schedule import attempt_state
from mtls_hooks.sender._retry import AttemptFailed, RetryPolicy

__all__ = ["Decision", "decide"]


class Decision(NamedTuple):
    """``retry`` after ``wait_s``, or ``failed`` (the dead letter), with the reason."""

    kind: Literal["retry", "failed"]
    wait_s: float
    reason: str


def decide(policy: RetryPolicy, job: Job, failure: AttemptFailed, *, now: float) -> Decision:
    """Judge ``failure``, the job's attempt number ``job.attempts + 1``, under ``policy``."""
    if not failure.retryable:
        return Decision("failed", 0.0, str(failure))
    state = attempt_state(job, failure, now=now)
    if not policy.retry(state):
        return Decision("failed", 0.0, str(failure))
    wait_s = max(0.0, float(policy.wait(state)))
    state.upcoming_sleep = wait_s
    tries = state.attempt_number
    if policy.stop(state):
        return Decision(
            "failed", 0.0, f"gave up after {tries} attempt(s) (attempt limit): {failure}"
        )
    deadline_s = policy.deadline_s
    if deadline_s is not None and now + wait_s > job.created_at + deadline_s:
        why = f"deadline of {deadline_s:g} s"
        return Decision("failed", 0.0, f"gave up after {tries} attempt(s) ({why}): {failure}")
    return Decision("retry", wait_s, str(failure))
