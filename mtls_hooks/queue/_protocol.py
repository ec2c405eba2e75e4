"""The durable queue engine's protocol: jobs with states, leases, scheduled attempts and a
dead letter, behind one small store interface that every backend follows.

The outbox (webhooks to send) and the inbox (verified webhooks to handle) are both users of
it. A *job* is an opaque payload for a *target* (an outbox endpoint, an inbox route) in a
named *queue*; the engine never reads the payload.

States and the moves between them::

    enqueue ──► pending ──claim──► running ──settle(done)────► done
                  ▲  ▲                │ ──settle(failed)──► failed (the dead letter)
                  │  └─settle(retry at t), settle(release)─┘      │
                  │                   │ lease expired: claimable again as if pending
                  └──────────── requeue (an operator's replay) ◄──┘

* :meth:`QueueStore.enqueue` commits a pending job and returns its id once durable. An
  ``idempotency_key`` already used in the queue returns the first job's id instead.
  :meth:`QueueStore.enqueue_many` commits several in one transaction (a group commit: the
  inbox writes the webhooks of one event-loop turn together).
* :meth:`QueueStore.claim` takes due pending jobs (``run_at <= now``) and running jobs whose
  lease expired, in small batches, marks them running under a lease ``(owner, expiry)`` and
  returns them. Jobs of a disabled target are left alone. With a ``fifo_key`` a job is
  claimable only while no earlier job with that key is pending or running: one at a time,
  in enqueue order (a retry waiting for its time holds the later ones back).
  A claim may carry the owner's settlements, applied first in the same transaction.
  Taking over an expired lease counts the attempt its worker never settled (``attempts``
  and ``tries`` go up by one, ``last_error`` says so, starting with
  :data:`LOST_ATTEMPT`): a job that kills every worker that runs it (out of memory, a
  crash in a C library) uses up its attempts like any failing one, and the worker that
  claims it dead-letters it once its policy says stop, instead of running it forever.
* :meth:`QueueStore.renew` extends the leases an owner still holds (its heartbeat).
* :meth:`QueueStore.settle` ends a claim: ``done``, ``retry`` at a time, ``failed``, or
  ``release`` (back to pending without counting an attempt: shutdown, rate limit). It applies
  only while the caller still holds the lease (fencing), and records the attempt, which
  happened whatever the lease says, in the job's history.

A lease is the only exclusion: a worker that outlives its lease without renewing it (paused,
partitioned) may find the job claimed again by another, so a job can be in flight twice after
a lease expires. Delivery is therefore at least once; receivers dedupe on the job id.

Targets are records the engine keeps beside the jobs: a JSON config, an enabled flag (a
circuit breaker or an operator turns it off), the start of a failure streak, and a token
bucket for rate limits shared by every worker on the store.
"""

from __future__ import annotations

import enum
import math
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple, Protocol, runtime_checkable

from mtls_hooks.core._errors import ConfigurationError, MtlsHooksError

__all__ = [
    "DEFAULT_LEASE_S",
    "LOST_ATTEMPT",
    "AttemptRecord",
    "Job",
    "JobState",
    "JsonText",
    "NewJob",
    "QueueStats",
    "QueueStore",
    "Settlement",
    "StoreUnavailableError",
    "Target",
    "check_seconds",
]

#: How long a claim lasts without a heartbeat: Convoy's PostgreSQL queue uses 90 s.
DEFAULT_LEASE_S: Final = 60.0
#: How ``last_error`` starts when a claim took over an expired lease (a lost attempt).
LOST_ATTEMPT: Final = "lease expired"
#: How many jobs one claim takes at most: small batches keep a crashed worker's share small.
DEFAULT_BATCH: Final = 16

# An empty default for NewJob.meta, never mutated.
_NO_META: Mapping[str, Any] = types.MappingProxyType({})

SettleKind = Literal["done", "retry", "failed", "release"]


class StoreUnavailableError(MtlsHooksError):
    """The queue's database cannot be reached or used (connection refused, timeout)."""


class JobState(enum.StrEnum):
    """Where a job is in its life; see the module docstring."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class JsonText(str):
    """A job's ``meta`` already serialised as one JSON object, by a caller that builds it
    faster than ``json.dumps`` would on each enqueue (the inbox, per webhook)."""

    __slots__ = ()


class NewJob(NamedTuple):
    """A job to enqueue.

    Attributes:
        queue: the queue's name (``"outbox"``, ``"inbox"``).
        target: the target it is for (an endpoint's name).
        payload: opaque bytes, stored as given.
        meta: small JSON-serialisable facts shown by operators (event type), or the same
            already serialised (:class:`JsonText`).
        job_id: the id to use; the store makes one when ``None``.
        idempotency_key: a second enqueue with the same key in the queue is the same job.
        fifo_key: jobs sharing it run one at a time in enqueue order.
        run_at: the earliest time (epoch seconds) it may run; ``None`` for now.
    """

    queue: str
    target: str
    payload: bytes
    meta: Mapping[str, Any] | JsonText = _NO_META
    job_id: str | None = None
    idempotency_key: str | None = None
    fifo_key: str | None = None
    run_at: float | None = None


class Job(NamedTuple):
    """A job as stored (named tuples, like the sender's results: a worker builds thousands).

    Attributes:
        attempts: attempts in the current round (reset by an operator's requeue), which the
            retry policy counts.
        tries: every attempt ever made; the number of the next attempt is ``tries + 1``.
        lease_owner: who holds it while running, else ``None``.
        lease_expires_at: when that lease ends (epoch seconds).
        last_error: why the last attempt failed, one line.
    """

    id: str
    queue: str
    target: str
    payload: bytes
    meta: Mapping[str, Any]
    state: JobState
    attempts: int
    tries: int
    run_at: float
    created_at: float
    updated_at: float
    idempotency_key: str | None = None
    fifo_key: str | None = None
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    last_error: str | None = None
    seq: int = 0  # enqueue order within the store

    def __repr__(self) -> str:
        # Never the payload: it may hold personal data.
        return (
            f"Job(id={self.id!r}, target={self.target!r}, state={self.state.value}, "
            f"attempts={self.attempts}, payload_bytes={len(self.payload)})"
        )


class AttemptRecord(NamedTuple):
    """One attempt in a job's history.

    Attributes:
        number: 1 for the job's first attempt ever; never reset.
        started_at: epoch seconds.
        outcome: ``"done"``, ``"retry"``, ``"failed"`` or ``"release"``.
        status_code: the HTTP status, if any.
        error: the failure's class name, if any.
        detail: one line, never key material.
        worker: the lease owner that made it.
    """

    job_id: str
    number: int
    started_at: float
    latency_s: float
    outcome: str
    status_code: int | None = None
    error: str | None = None
    detail: str = ""
    worker: str = ""


class Settlement(NamedTuple):
    """How a claim ends; see :meth:`QueueStore.settle`.

    Attributes:
        kind: ``done``, ``retry`` (at ``run_at``), ``failed`` or ``release`` (at ``run_at``).
        run_at: when a retried or released job is due again.
        error: the reason kept in ``last_error`` (``retry``, ``failed``).
        attempt: the attempt to record; ``None`` for a release that made none.
    """

    job_id: str
    kind: SettleKind
    run_at: float | None = None
    error: str | None = None
    attempt: AttemptRecord | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """A target record: config plus the engine's own per-target state."""

    name: str
    config: Mapping[str, Any]
    enabled: bool = True
    disabled_reason: str | None = None
    failing_since: float | None = None


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counts for ``status``: by state, by target and state, and the oldest due job's age."""

    by_state: Mapping[str, int]
    by_target: Mapping[str, Mapping[str, int]]
    oldest_due_age_s: float | None


@runtime_checkable
class QueueStore(Protocol):
    """Where jobs live. Every method is blocking and thread-safe; the workers call them
    from a thread. Times are epoch seconds from the store's injected clock."""

    url: str

    def enqueue(self, job: NewJob) -> tuple[str, bool]:
        """Commit ``job``; return ``(id, created)``, ``created`` False for a known key."""
        ...

    def enqueue_many(self, jobs: Sequence[NewJob]) -> list[tuple[str, bool]]:
        """Commit ``jobs`` in one transaction; one ``(id, created)`` each, in order.

        All or none: when the transaction fails, none of them was enqueued.
        """
        ...

    def claim(
        self,
        queue: str,
        owner: str,
        *,
        limit: int,
        lease_s: float,
        settlements: Sequence[Settlement] = (),
    ) -> list[Job]:
        """Lease up to ``limit`` claimable jobs to ``owner``, oldest due first, after applying
        ``settlements`` (as :meth:`settle` does) in the same transaction: a busy worker
        hands back what it finished when it asks for more."""
        ...

    def renew(self, owner: str, job_ids: Sequence[str], lease_s: float) -> int:
        """Extend ``owner``'s leases on ``job_ids``; return how many it still held."""
        ...

    def settle(self, owner: str, settlements: Sequence[Settlement]) -> int:
        """Apply settlements atomically; return how many leases were still ``owner``'s."""
        ...

    def get(self, job_id: str) -> Job | None:
        """Return the job, or ``None``."""
        ...

    def history(self, job_id: str) -> list[AttemptRecord]:
        """Return the job's attempts, oldest first."""
        ...

    def jobs(
        self,
        queue: str,
        *,
        state: JobState | None = None,
        target: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """List jobs, oldest first."""
        ...

    def stats(self, queue: str) -> QueueStats:
        """Count jobs by state and target; age of the oldest due pending job."""
        ...

    def requeue(self, queue: str, *, job_ids: Sequence[str] = (), target: str | None = None) -> int:
        """Move failed jobs (these ids, or this target's, or all) back to pending, due now."""
        ...

    def purge(self, queue: str, *, older_than_s: float) -> int:
        """Delete done and failed jobs (and their history) last updated that long ago."""
        ...

    def put_target(self, name: str, config: Mapping[str, Any], *, enabled: bool = True) -> None:
        """Create or replace a target's config (its state is kept on replace)."""
        ...

    def get_target(self, name: str) -> Target | None:
        """Return the target, or ``None``."""
        ...

    def targets(self) -> list[Target]:
        """Every target, by name."""
        ...

    def set_enabled(self, name: str, enabled: bool, *, reason: str | None = None) -> bool:
        """Enable or disable a target; False when it does not exist."""
        ...

    def note_failure(self, name: str, *, window_s: float) -> bool:
        """Start or extend a failure streak; disable the target (returning True) once the
        streak has lasted ``window_s``."""
        ...

    def note_success(self, name: str) -> None:
        """End the target's failure streak."""
        ...

    def take_token(self, name: str, *, rate_per_s: float, burst: float) -> float:
        """Take one token from the target's shared bucket: 0.0, or the seconds to wait."""
        ...

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` (from any thread) when jobs may have become claimable; returns an
        unsubscribe function. Workers still poll: a wake is a hint."""
        ...

    def close(self) -> None:
        """Release connections; idempotent."""
        ...


def check_seconds(name: str, value: float, *, zero: bool = False) -> float:
    """Return ``value`` as a float after checking it is a finite, positive number of seconds.

    Raises:
        ConfigurationError: not a number, not finite, or not > 0 (>= 0 with ``zero``).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise ConfigurationError(f"{name} must be finite and > 0, got {value!r}")
    return float(value)
