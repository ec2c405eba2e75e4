"""What the outbox and the inbox share as users of one queue: the store (given, or opened from
a URL and then owned) and the operator's work on that queue without the I/O choice.

The public verbs (status, messages, show, retry, purge) stay on each class, blocking or
async as that class is; they call these helpers, so the rules (exactly one way to choose
what to replay, an id from another queue is unknown here) are written once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import ClassVar

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.queue._protocol import AttemptRecord, Job, QueueStore
from mtls_hooks.queue._url import open_store

__all__ = ["QueueView"]


class QueueView:
    """One queue of a store, for the classes that enqueue to it and operate it."""

    #: The queue's name in the engine's tables.
    queue: ClassVar[str] = ""
    #: What operators call one job of it ("message", "event").
    noun: ClassVar[str] = "job"

    def __init__(self, store: QueueStore | str, *, clock: Callable[[], float] = time.time) -> None:
        if isinstance(store, str):
            self.store: QueueStore = open_store(store, clock=clock)
            self._owns_store = True
        else:
            self.store = store
            self._owns_store = False
        self._clock = clock

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.store!r})"

    def _check_target(self, name: str) -> None:
        """Raise when ``name`` is not a target of this queue (the outbox's endpoints)."""

    def _show(self, job_id: str) -> tuple[Job, list[AttemptRecord]]:
        job = self.store.get(job_id)
        if job is None or job.queue != self.queue:
            raise ConfigurationError(f"no {self.queue} {self.noun} {job_id!r}")
        return job, self.store.history(job_id)

    def _retry(self, job_ids: Sequence[str], target: str | None, all_failed: bool) -> int:
        chosen = sum(bool(x) for x in (list(job_ids), target is not None, all_failed))
        if chosen != 1:
            raise ConfigurationError(f"retry needs {self.noun} ids, an endpoint, or all_failed")
        if target is not None:
            self._check_target(target)
        return self.store.requeue(self.queue, job_ids=list(job_ids), target=target)

    def _close_store(self) -> None:
        if self._owns_store:
            self.store.close()
