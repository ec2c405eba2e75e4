"""An in-process queue for tests and one-process tools: the protocol on dicts, under a lock.

It keeps nothing across a restart, so it offers none of the durability guarantees; it passes
the same conformance suite as the SQL stores, which is what makes it a faithful stand-in.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.queue._protocol import (
    LOST_ATTEMPT,
    AttemptRecord,
    Job,
    JobState,
    JsonText,
    NewJob,
    QueueStats,
    Settlement,
    Target,
    check_seconds,
)
from mtls_hooks.queue._sql import new_job_id

__all__ = ["MemoryQueueStore"]

_OPEN = (JobState.PENDING, JobState.RUNNING)


class MemoryQueueStore:
    """The :class:`~mtls_hooks.queue.QueueStore` protocol in process memory."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        """Create an empty queue; ``clock`` gives epoch seconds (injected by tests)."""
        self.url = "memory://"
        self._clock = clock
        self._lock = threading.RLock()
        self._seq = itertools.count()
        self._jobs: dict[str, tuple[int, Job]] = {}
        self._keys: dict[tuple[str, str], str] = {}
        self._history: dict[str, list[AttemptRecord]] = {}
        self._targets: dict[str, dict[str, Any]] = {}
        self._listeners: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        return "MemoryQueueStore()"

    def _wake(self) -> None:
        for wake in list(self._listeners):
            wake()

    def enqueue(self, job: NewJob) -> tuple[str, bool]:
        """See :meth:`QueueStore.enqueue`."""
        meta = self._checked_meta(job)
        now = self._clock()
        with self._lock:
            if job.idempotency_key is not None:
                known = self._keys.get((job.queue, job.idempotency_key))
                if known is not None:
                    return known, False
            job_id = job.job_id or new_job_id()
            if job_id in self._jobs:
                return job_id, False
            stored = Job(
                id=job_id,
                queue=job.queue,
                target=job.target,
                payload=bytes(job.payload),
                meta=meta,
                state=JobState.PENDING,
                attempts=0,
                tries=0,
                run_at=now if job.run_at is None else job.run_at,
                created_at=now,
                updated_at=now,
                idempotency_key=job.idempotency_key,
                fifo_key=job.fifo_key,
            )
            seq = next(self._seq)
            self._jobs[job_id] = (seq, stored._replace(seq=seq))
            if job.idempotency_key is not None:
                self._keys[(job.queue, job.idempotency_key)] = job_id
        self._wake()
        return job_id, True

    def enqueue_many(self, jobs: Sequence[NewJob]) -> list[tuple[str, bool]]:
        """See :meth:`QueueStore.enqueue_many` (a job with unserialisable meta fails the
        call before any is stored)."""
        for job in jobs:
            self._checked_meta(job)
        return [self.enqueue(job) for job in jobs]

    @staticmethod
    def _checked_meta(job: NewJob) -> Any:
        try:
            if isinstance(job.meta, JsonText):
                return json.loads(job.meta)
            return json.loads(json.dumps(dict(job.meta)))
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"job meta is not JSON-serialisable: {exc}") from exc

    def _claimable(self, seq: int, job: Job, now: float) -> bool:
        target = self._targets.get(job.target)
        if target is not None and not target["enabled"]:
            return False
        if job.fifo_key is not None:
            for other_seq, other in self._jobs.values():
                if (
                    other_seq < seq
                    and other.queue == job.queue
                    and other.fifo_key == job.fifo_key
                    and other.state in _OPEN
                ):
                    return False
        return True

    def claim(
        self,
        queue: str,
        owner: str,
        *,
        limit: int,
        lease_s: float,
        settlements: Sequence[Settlement] = (),
    ) -> list[Job]:
        """See :meth:`QueueStore.claim`."""
        now = self._clock()
        with self._lock:
            if settlements:
                self.settle(owner, settlements)
            expired = sorted(
                (j.lease_expires_at or 0.0, seq, j)
                for seq, j in self._jobs.values()
                if j.queue == queue
                and j.state is JobState.RUNNING
                and (j.lease_expires_at or 0.0) <= now
            )
            due = sorted(
                (j.run_at, seq, j)
                for seq, j in self._jobs.values()
                if j.queue == queue and j.state is JobState.PENDING and j.run_at <= now
            )
            chosen = [(seq, j) for _, seq, j in expired if self._claimable(seq, j, now)][:limit]
            chosen += [(seq, j) for _, seq, j in due if self._claimable(seq, j, now)][
                : limit - len(chosen)
            ]
            claimed = []
            for seq, found in chosen:
                job = found
                if job.state is JobState.RUNNING and job.lease_owner != owner:
                    # An expired lease of another worker: its attempt was lost.
                    job = job._replace(
                        attempts=job.attempts + 1,
                        tries=job.tries + 1,
                        last_error=f"{LOST_ATTEMPT}: its worker {job.lease_owner} stopped "
                        "before settling it",
                    )
                leased = job._replace(
                    state=JobState.RUNNING,
                    lease_owner=owner,
                    lease_expires_at=now + lease_s,
                    updated_at=now,
                )
                self._jobs[job.id] = (seq, leased)
                claimed.append(leased)
        claimed.sort(key=lambda job: (job.run_at, job.seq))
        return claimed

    def _held(self, job_id: str, owner: str) -> tuple[int, Job] | None:
        entry = self._jobs.get(job_id)
        if entry is None or entry[1].state is not JobState.RUNNING:
            return None
        return entry if entry[1].lease_owner == owner else None

    def renew(self, owner: str, job_ids: Sequence[str], lease_s: float) -> int:
        """See :meth:`QueueStore.renew`."""
        expires_at = self._clock() + lease_s
        held = 0
        with self._lock:
            for job_id in job_ids:
                entry = self._held(job_id, owner)
                if entry is not None:
                    seq, job = entry
                    self._jobs[job_id] = (
                        seq,
                        job._replace(lease_expires_at=expires_at),
                    )
                    held += 1
        return held

    def settle(self, owner: str, settlements: Sequence[Settlement]) -> int:
        """See :meth:`QueueStore.settle`."""
        now = self._clock()
        held = 0
        with self._lock:
            for s in settlements:
                if s.attempt is not None:
                    self._history.setdefault(s.job_id, []).append(s.attempt)
                entry = self._held(s.job_id, owner)
                if entry is None:
                    continue
                held += 1
                seq, job = entry
                counted = 0 if s.kind == "release" else 1
                state = {"done": JobState.DONE, "failed": JobState.FAILED}.get(
                    s.kind, JobState.PENDING
                )
                self._jobs[s.job_id] = (
                    seq,
                    job._replace(
                        state=state,
                        run_at=job.run_at if s.run_at is None else s.run_at,
                        attempts=job.attempts + counted,
                        tries=job.tries + counted,
                        last_error=None if s.kind == "done" else (s.error or job.last_error),
                        lease_owner=None,
                        lease_expires_at=None,
                        updated_at=now,
                    ),
                )
        if any(s.kind == "release" for s in settlements):
            self._wake()
        return held

    def get(self, job_id: str) -> Job | None:
        """See :meth:`QueueStore.get`."""
        with self._lock:
            entry = self._jobs.get(job_id)
        return None if entry is None else entry[1]

    def history(self, job_id: str) -> list[AttemptRecord]:
        """See :meth:`QueueStore.history`."""
        with self._lock:
            return sorted(self._history.get(job_id, []), key=lambda a: (a.number, a.started_at))

    def jobs(
        self,
        queue: str,
        *,
        state: JobState | None = None,
        target: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """See :meth:`QueueStore.jobs`."""
        with self._lock:
            found = sorted(self._jobs.values(), key=lambda entry: entry[0])
        return [
            job
            for _, job in found
            if job.queue == queue
            and (state is None or job.state is state)
            and (target is None or job.target == target)
        ][:limit]

    def stats(self, queue: str) -> QueueStats:
        """See :meth:`QueueStore.stats`."""
        now = self._clock()
        by_state = {state.value: 0 for state in JobState}
        by_target: dict[str, dict[str, int]] = {}
        oldest: float | None = None
        with self._lock:
            for _, job in self._jobs.values():
                if job.queue != queue:
                    continue
                by_state[job.state.value] += 1
                counts = by_target.setdefault(job.target, {})
                counts[job.state.value] = counts.get(job.state.value, 0) + 1
                if job.state is JobState.PENDING and job.run_at <= now:
                    oldest = job.run_at if oldest is None else min(oldest, job.run_at)
        return QueueStats(by_state, by_target, None if oldest is None else now - oldest)

    def requeue(self, queue: str, *, job_ids: Sequence[str] = (), target: str | None = None) -> int:
        """See :meth:`QueueStore.requeue`."""
        now = self._clock()
        count = 0
        with self._lock:
            for job_id, (seq, job) in list(self._jobs.items()):
                if job.queue != queue or job.state is not JobState.FAILED:
                    continue
                if job_ids and job_id not in job_ids:
                    continue
                if not job_ids and target is not None and job.target != target:
                    continue
                self._jobs[job_id] = (
                    seq,
                    job._replace(state=JobState.PENDING, run_at=now, attempts=0, updated_at=now),
                )
                count += 1
        if count:
            self._wake()
        return count

    def purge(self, queue: str, *, older_than_s: float) -> int:
        """See :meth:`QueueStore.purge`.

        Raises:
            ConfigurationError: a negative or non-finite age.
        """
        before = self._clock() - check_seconds("older_than_s", older_than_s, zero=True)
        count = 0
        with self._lock:
            for job_id, (_, job) in list(self._jobs.items()):
                finished = job.state in (JobState.DONE, JobState.FAILED)
                if job.queue == queue and finished and job.updated_at <= before:
                    del self._jobs[job_id]
                    self._history.pop(job_id, None)
                    if job.idempotency_key is not None:
                        self._keys.pop((job.queue, job.idempotency_key), None)
                    count += 1
        return count

    def put_target(self, name: str, config: Mapping[str, Any], *, enabled: bool = True) -> None:
        """See :meth:`QueueStore.put_target`."""
        config = json.loads(json.dumps(dict(config), sort_keys=True))
        with self._lock:
            if name in self._targets:
                self._targets[name]["config"] = config
            else:
                self._targets[name] = {
                    "config": config,
                    "enabled": enabled,
                    "reason": None,
                    "failing_since": None,
                    "tokens": None,
                    "tokens_at": None,
                }

    def _target(self, name: str) -> Target:
        t = self._targets[name]
        return Target(name, t["config"], t["enabled"], t["reason"], t["failing_since"])

    def get_target(self, name: str) -> Target | None:
        """See :meth:`QueueStore.get_target`."""
        with self._lock:
            return self._target(name) if name in self._targets else None

    def targets(self) -> list[Target]:
        """See :meth:`QueueStore.targets`."""
        with self._lock:
            return [self._target(name) for name in sorted(self._targets)]

    def set_enabled(self, name: str, enabled: bool, *, reason: str | None = None) -> bool:
        """See :meth:`QueueStore.set_enabled`."""
        with self._lock:
            t = self._targets.get(name)
            if t is None:
                return False
            t["enabled"], t["reason"] = enabled, None if enabled else reason
            if enabled:
                t["failing_since"] = None
        if enabled:
            self._wake()
        return True

    def note_failure(self, name: str, *, window_s: float) -> bool:
        """See :meth:`QueueStore.note_failure`."""
        now = self._clock()
        with self._lock:
            t = self._targets.get(name)
            if t is None:
                return False
            if t["failing_since"] is None:
                t["failing_since"] = now
                return False
            if not t["enabled"] or now - t["failing_since"] < window_s:
                return False
            t["enabled"] = False
            t["reason"] = (
                f"circuit breaker: every delivery failed for {now - t['failing_since']:.0f} s"
            )
            return True

    def note_success(self, name: str) -> None:
        """See :meth:`QueueStore.note_success`."""
        with self._lock:
            t = self._targets.get(name)
            if t is not None:
                t["failing_since"] = None

    def take_token(self, name: str, *, rate_per_s: float, burst: float) -> float:
        """See :meth:`QueueStore.take_token`."""
        now = self._clock()
        with self._lock:
            t = self._targets.get(name)
            if t is None:
                return 0.0
            tokens, tokens_at = t["tokens"], t["tokens_at"]
            if tokens is None or tokens_at is None:
                tokens, tokens_at = burst, now
            tokens = min(burst, tokens + max(0.0, now - tokens_at) * rate_per_s)
            wait_s = 0.0 if tokens >= 1 else (1 - tokens) / rate_per_s
            t["tokens"], t["tokens_at"] = (tokens - 1 if not wait_s else tokens), now
            return wait_s

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        """See :meth:`QueueStore.subscribe`."""
        self._listeners.append(wake)

        def unsubscribe() -> None:
            if wake in self._listeners:
                self._listeners.remove(wake)

        return unsubscribe

    def close(self) -> None:
        """Nothing to release."""
