"""tenacity's view of a queued job's next attempt, so retry policies decide as they do in a loop.

A worker never sleeps between attempts: the policy's wait becomes the job's next ``run_at``.
For tenacity's ``stop``, ``wait`` and ``retry`` objects to judge such an attempt, they get the
state a ``Retrying`` loop would have built: the attempt number (counted in the job's current
round), the failure as the outcome, and the time since the job was enqueued, so that
``stop_after_delay`` measures from the enqueue rather than from a worker's start.
"""

from __future__ import annotations

from typing import Any

import tenacity

from mtls_hooks.queue._protocol import LOST_ATTEMPT, Job

__all__ = ["LostAttemptError", "attempt_state", "lost_and_exhausted"]


class LostAttemptError(Exception):
    """An attempt whose worker stopped before settling it: its lease expired."""


def attempt_state(job: Job, failure: BaseException, *, now: float) -> tenacity.RetryCallState:
    """The state of ``job``'s attempt number ``job.attempts + 1``, which failed with
    ``failure`` at ``now``."""
    state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
    state.attempt_number = job.attempts + 1
    outcome = tenacity.Future(state.attempt_number)
    outcome.set_exception(failure)
    state.outcome = outcome
    state.start_time = 0.0
    state.outcome_timestamp = max(0.0, now - job.created_at)
    return state


def lost_and_exhausted(stop: Any, job: Job, *, now: float) -> bool:
    """True when ``job``'s last attempt was lost with its worker (the claim that took the
    expired lease counted it) and the tenacity ``stop`` allows no more after it.

    A worker checks this before running a job, so that one which kills every worker that runs
    it ends in the dead letter like any other failing job.
    """
    if not job.attempts or not (job.last_error or "").startswith(LOST_ATTEMPT):
        return False
    previous = job._replace(attempts=job.attempts - 1)
    return bool(stop(attempt_state(previous, LostAttemptError(job.last_error), now=now)))
