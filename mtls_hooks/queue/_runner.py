"""The worker loop every queue consumer shares: claim, run, settle, renew, drain.

The outbox's delivery worker and the inbox's handler worker differ only in what one job
*is* (an HTTP delivery, a handler call); everything around it is this class:

* the claim loop takes small batches (``batch``), keeping up to one batch claimed ahead of
  the ``concurrency`` slots, and otherwise waits for room, a wake-up (``NOTIFY`` on
  PostgreSQL, an enqueue in this process) or the poll interval, whichever comes first; each
  claim carries the settlements gathered since the last one (one transaction for both);
* each job is one task making exactly one attempt (:meth:`QueueWorker._process`, the
  subclass's part), which returns its settlement: ``done``, ``retry`` at a time, ``failed``
  (the dead letter) or ``release``;
* a settler writes the settlements in batches, each with its attempt record;
* a heartbeat renews the leases of every job still held, every ``lease_s / 3``;
* while metrics are on, a task refreshes the queue's depth gauges (``_observe``).

:meth:`QueueWorker.stop` (the CLIs call it on SIGTERM) stops claiming, lets the jobs in
flight finish for up to ``shutdown_grace_s``, releases the rest to the queue and writes every
settlement before :meth:`QueueWorker.run` returns. A ``kill -9`` loses nothing either: the
dead worker's jobs come back when their leases expire, and run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, Generic, TypedDict, TypeVar

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.metrics._registry import current_metrics
from mtls_hooks.queue._observe import depth_loop
from mtls_hooks.queue._protocol import (
    DEFAULT_BATCH,
    DEFAULT_LEASE_S,
    AttemptRecord,
    Job,
    QueueStore,
    Settlement,
    StoreUnavailableError,
    check_seconds,
)
from mtls_hooks.queue._url import open_store

__all__ = ["QueueWorker", "RunnerCounts", "RunnerOptions"]

_T = TypeVar("_T")
# How long the settler gathers settlements before writing them in one transaction. A busy
# worker's claims carry them sooner (FIFO successors included: a finished job with nothing
# else in flight wakes a claim at once); this bounds the wait of an idle worker.
_SETTLE_DELAY_S: Final = 0.05


class RunnerOptions(TypedDict, total=False):
    """The worker loop's settings, which every worker takes as keyword arguments.

    Keys:
        concurrency: jobs in flight at most.
        batch: jobs claimed per query at most.
        lease_s: how long a claim lasts without a heartbeat; a crashed worker's jobs run
            again after it.
        poll_interval_s: the longest wait between claims when nothing wakes the worker.
        shutdown_grace_s: how long :meth:`QueueWorker.stop` lets running jobs finish.
        worker_id: the lease owner's name; host, PID and a random suffix by default.
        metrics_interval_s: while metrics are on, how often the depth gauges refresh.
        clock: epoch seconds, for schedules; injected by tests.
    """

    concurrency: int
    batch: int
    lease_s: float
    poll_interval_s: float
    shutdown_grace_s: float
    worker_id: str | None
    metrics_interval_s: float
    clock: Callable[[], float]


@dataclass
class RunnerCounts:
    """What every worker counts: jobs handed back unattempted, and leases lost."""

    released: int = 0
    lost_leases: int = 0


_C = TypeVar("_C", bound=RunnerCounts)


class QueueWorker(Generic[_C]):
    """Runs the jobs of one queue until stopped; subclasses say what a job is.

    A subclass implements :meth:`_process` and may add background tasks with
    :meth:`_watchers` and cleanup with :meth:`_closing`.
    """

    #: The queue's name in the engine's tables.
    queue: str = ""
    #: Where this worker logs (its part's logger).
    logger: logging.Logger = logging.getLogger("mtls_hooks.queue")
    #: What the log lines call it.
    what: str = "queue worker"

    def __init__(
        self,
        store: QueueStore | str,
        *,
        counts: _C,
        concurrency: int = 16,
        batch: int = DEFAULT_BATCH,
        lease_s: float = DEFAULT_LEASE_S,
        poll_interval_s: float = 1.0,
        shutdown_grace_s: float = 10.0,
        worker_id: str | None = None,
        metrics_interval_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Check the settings and open the store (from a URL); nothing runs until :meth:`run`.

        The settings are :class:`RunnerOptions`.

        Raises:
            ConfigurationError: a bad number or store URL.
            StoreUnavailableError: the database cannot be reached.
        """
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError("concurrency must be a positive integer")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ConfigurationError("batch must be a positive integer")
        self.lease_s = check_seconds("lease_s", lease_s)
        self.poll_interval_s = check_seconds("poll_interval_s", poll_interval_s)
        self.shutdown_grace_s = check_seconds("shutdown_grace_s", shutdown_grace_s, zero=True)
        self.metrics_interval_s = check_seconds("metrics_interval_s", metrics_interval_s)
        self.concurrency = concurrency
        self.batch = min(batch, concurrency)
        self._min_claim = max(1, self.batch // 2)
        self.worker_id = worker_id or (
            f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        )
        self._owns_store = isinstance(store, str)
        self.store: QueueStore = open_store(store, clock=clock) if isinstance(store, str) else store
        self._clock = clock
        self.counts = counts
        self._held: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: list[Settlement] = []
        self._stopping = self._stop_requested = False
        self._executor = self._new_executor()
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.worker_id!r}, {self.store!r})"

    def _new_executor(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"mtls-hooks-{self.queue}")

    # -- what a subclass supplies -----------------------------------------------------

    async def _process(self, job: Job) -> Settlement:
        """Make one attempt at ``job`` and say how its claim ends."""
        raise NotImplementedError

    def _watchers(self) -> list[Coroutine[Any, Any, None]]:
        """Background tasks to run beside the claim loop (cancelled when it ends)."""
        return []

    async def _closing(self) -> None:
        """Release what the subclass holds, once every job has settled."""

    # -- running ----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to finish: no new claims, jobs in flight get the grace."""
        self._stop_requested = self._stopping = True
        self._wake.set()

    async def run(self, *, until_idle: bool = False) -> _C:
        """Run jobs until :meth:`stop` (or, with ``until_idle``, until nothing is due).

        Returns:
            The worker's counts.
        """
        loop = asyncio.get_running_loop()
        # A run that ended on a fault may be started again; one asked to stop stays stopped.
        self._stopping = self._stop_requested
        self._wake = wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._executor = self._new_executor()

        def wake_up() -> None:  # from the store's threads
            loop.call_soon_threadsafe(wake.set)

        unsubscribe = self.store.subscribe(wake_up)
        settler = asyncio.create_task(self._settler())
        heartbeat = asyncio.create_task(self._heartbeat())
        watchers = [asyncio.create_task(watch) for watch in self._watchers()]
        metrics = current_metrics()
        if metrics is not None:
            depth = depth_loop(self.store, self.queue, metrics,
                               interval_s=self.metrics_interval_s, call=self._call)  # fmt: skip
            watchers.append(asyncio.create_task(depth))
        try:
            await self._claim_loop(until_idle)
        finally:
            unsubscribe()
            await self._drain()
            heartbeat.cancel()
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            self._stopping = True
            self._settled.set()
            await settler
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await self._closing()
            self._executor.shutdown(wait=True)
            if self._owns_store:
                self.store.close()
        return self.counts

    async def _call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run a blocking store method on the worker's threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def _claim_loop(self, until_idle: bool) -> None:
        while not self._stopping:
            self._wake.clear()
            # Up to a batch more than the slots is claimed ahead: the next jobs are already
            # here when a slot frees, so no slot idles while a claim runs.
            free = self.concurrency + self.batch - len(self._tasks)
            want = min(free, self.batch)
            if want >= self._min_claim or (want > 0 and not self._tasks):
                # Hand back what finished meanwhile in the same transaction as the claim.
                settled, self._pending = self._pending, []
                try:
                    jobs = await self._call(
                        self.store.claim,
                        self.queue,
                        self.worker_id,
                        limit=want,
                        lease_s=self.lease_s,
                        settlements=settled,
                    )
                except StoreUnavailableError as exc:
                    self.logger.warning("%s %s cannot claim: %s", self.what, self.worker_id, exc)
                    self._pending[:0] = settled
                    jobs = []
                else:
                    self._held.difference_update(s.job_id for s in settled)
                for job in jobs:
                    if job.id in self._held:
                        continue  # our own lease ran out and we took it again: still running
                    self._held.add(job.id)
                    task = asyncio.create_task(self._run_one(job))
                    self._tasks.add(task)
                    task.add_done_callback(self._finished)
                if len(jobs) == want:
                    continue  # there may be more due right now
                if until_idle and not jobs and not self._tasks and not self._held:
                    return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        # Wake the claim loop only once a claim is worth making: waking it on every
        # completion cost a loop turn and a timer per job.
        if self.concurrency + self.batch - len(self._tasks) >= self._min_claim or not self._tasks:
            self._wake.set()
        if not task.cancelled() and task.exception() is not None:  # pragma: no cover - a bug
            self.logger.error("%s task failed", self.what, exc_info=task.exception())

    async def _drain(self) -> None:
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=self.shutdown_grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _run_one(self, job: Job) -> None:
        try:
            async with self._slots:
                if self._stopping:  # claimed ahead, never started: straight back
                    settlement = Settlement(job.id, "release", run_at=self._clock())
                    self.counts.released += 1
                else:
                    settlement = await self._process(job)
        except asyncio.CancelledError:
            # Shutdown past the grace: back to the queue, due now, no attempt counted.
            self._settle(Settlement(job.id, "release", run_at=self._clock()))
            self.counts.released += 1
            raise
        except Exception as exc:
            # A fault outside the job's own work (a retry policy that raised, a record this
            # code cannot handle): never leave the job held and renewed forever. It counts
            # as an attempt and is tried again after a lease's time, its error kept.
            self.logger.exception("%s %s failed on %s", self.what, self.worker_id, job.id)
            now = self._clock()
            error = f"worker fault: {type(exc).__name__}: {exc}"[:500]
            record = AttemptRecord(job.id, job.tries + 1, now, 0.0, "retry", None,
                                   type(exc).__name__, error, self.worker_id)  # fmt: skip
            settlement = Settlement(
                job.id, "retry", run_at=now + self.lease_s, error=error, attempt=record
            )
        self._settle(settlement)

    # -- settling and leases ----------------------------------------------------------

    def _settle(self, settlement: Settlement) -> None:
        self._pending.append(settlement)
        self._settled.set()

    async def _settler(self) -> None:
        while True:
            await self._settled.wait()
            if len(self._pending) < self.batch and not self._stopping:
                # Let a few more finish first: one transaction for several settlements
                # (their leases run for lease_s; a few milliseconds here cost nothing).
                await asyncio.sleep(_SETTLE_DELAY_S)
            self._settled.clear()
            batch, self._pending = self._pending, []
            if batch:
                try:
                    await self._call(self.store.settle, self.worker_id, batch)
                except StoreUnavailableError as exc:
                    # Keep holding (and renewing) them; write again shortly.
                    self.logger.warning("%s %s cannot settle: %s", self.what, self.worker_id, exc)
                    self._pending[:0] = batch
                    if self._stopping:
                        return  # their leases will expire: run again
                    await asyncio.sleep(self.poll_interval_s)
                    self._settled.set()
                    continue
                for settlement in batch:
                    self._held.discard(settlement.job_id)
                # A settled job may free the next of its FIFO key, or a slot: claim again.
                self._wake.set()
            if self._stopping and not self._pending and not self._tasks:
                return

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            held = list(self._held)
            if not held:
                continue
            try:
                renewed = await self._call(self.store.renew, self.worker_id, held, self.lease_s)
            except StoreUnavailableError as exc:
                self.logger.warning("%s %s cannot renew leases: %s", self.what, self.worker_id, exc)
                continue
            if renewed < len(held):
                # Settled meanwhile, or a lease already lost: the job may be in flight at
                # another worker too (documented: at least once).
                self.counts.lost_leases += len(held) - renewed
