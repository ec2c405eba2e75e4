"""tenacity's view of a queued job's next attempt, so retry policies decide as they do in a loop.

A worker never sleeps between attempts: the policy's wait becomes the job's next ``run_at``.
For tenacity's ``stop``, ``wait`` and ``retry`` objects to judge such an attempt, they get the
state a ``Retrying`` loop would have built: the attempt number (counted in the job's current
round), the failure as the outcome, and the time since the job was enqueued, so that
``stop_after_delay`` measures from the enqueue rather than from a worker's start.
"""

from __future__ import annotations

import tenacity

from mtls_hooks.queue._protocol import Job

__all__ = ["attempt_state"]


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
