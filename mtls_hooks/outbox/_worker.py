"""The delivery worker: claims due outbox messages and delivers them with the async sender.

One loop, a few tasks, no sleeping while holding a row:

* the claim loop takes small batches (``batch``), keeping up to one batch claimed ahead of
  the ``concurrency`` slots, and otherwise waits for room, a wake-up (``NOTIFY`` on
  PostgreSQL, an enqueue in this process) or the poll interval, whichever comes first; each
  claim carries the settlements gathered since the last one (one transaction for both);
* each message is one task making exactly one attempt with the endpoint's sender (the same
  signing, pinning, answer cap and failure classification as ``send``), then turning the
  outcome into a settlement: ``done``, ``retry`` at the policy's next time (see
  ``_schedule``), ``failed`` (the dead letter) or ``release`` (a rate limit said "later");
* a settler writes the settlements in batches, each with its attempt record;
* a heartbeat renews the leases of every message still held, every ``lease_s / 3``;
* an expiry alarm watches the client certificates loaded, and while metrics are on a task
  refreshes the queue gauges (``_observe``: what each attempt and delivery records).

:meth:`DeliveryWorker.stop` (the CLI calls it on SIGTERM) stops claiming, lets the
deliveries in flight finish for up to ``shutdown_grace_s``, releases the rest to the queue
and writes every settlement before :meth:`run` returns. A ``kill -9`` loses nothing either:
the dead worker's messages come back when their leases expire, and are delivered again with
the same ``webhook-id``, which the receiver dedupes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.metrics._expiry import DAY_S
from mtls_hooks.metrics._registry import current_metrics
from mtls_hooks.outbox._endpoint import Endpoint
from mtls_hooks.outbox._observe import SenderCertificates, depth_loop, record_attempt
from mtls_hooks.outbox._outbox import QUEUE
from mtls_hooks.outbox._schedule import decide
from mtls_hooks.outbox._senders import SenderPool
from mtls_hooks.queue._protocol import (
    DEFAULT_BATCH,
    DEFAULT_LEASE_S,
    AttemptRecord,
    Job,
    QueueStore,
    Settlement,
    StoreUnavailableError,
    Target,
    check_seconds,
)
from mtls_hooks.queue._url import open_store
from mtls_hooks.sender._async import AsyncWebhookSender
from mtls_hooks.sender._retry import AttemptFailed, RetryPolicy

__all__ = ["DeliveryWorker", "WorkerCounts"]

_LOG = logging.getLogger("mtls_hooks.outbox")
_T = TypeVar("_T")
# An endpoint record is read again after this long: an edit or a disable applies soon.
_ENDPOINT_TTL_S: Final = 2.0
# How long the settler gathers settlements before writing them in one transaction. A busy
# worker's claims carry them sooner (FIFO successors included: a finished delivery with
# nothing else in flight wakes a claim at once); this bounds the wait of an idle worker.
_SETTLE_DELAY_S: Final = 0.05


@dataclass
class WorkerCounts:
    """What a worker did since it started."""

    delivered: int = 0
    retried: int = 0
    failed: int = 0
    released: int = 0
    lost_leases: int = 0


class DeliveryWorker:
    """Delivers outbox messages until stopped; see the module docstring.

    Example::

        worker = DeliveryWorker("postgresql://app@db/app", concurrency=32)
        await worker.run()  # until worker.stop()
    """

    def __init__(
        self,
        store: QueueStore | str,
        *,
        concurrency: int = 16,
        batch: int = DEFAULT_BATCH,
        lease_s: float = DEFAULT_LEASE_S,
        poll_interval_s: float = 1.0,
        shutdown_grace_s: float = 10.0,
        worker_id: str | None = None,
        on_disable: Callable[[str, str], Any] | None = None,
        file_check_s: float = 2.0,
        metrics_interval_s: float = 5.0,
        expiry_warn_days: float = 30.0,
        expiry_error_days: float = 7.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Configure a worker; nothing runs until :meth:`run`.

        Args:
            store: a :class:`~mtls_hooks.queue.QueueStore` or a store URL.
            concurrency: deliveries in flight at most (also each sender's pool size).
            batch: messages claimed per query at most.
            lease_s: how long a claim lasts without a heartbeat; a crashed worker's messages
                are delivered again after it.
            poll_interval_s: the longest wait between claims when nothing wakes the worker.
            shutdown_grace_s: how long :meth:`stop` lets deliveries in flight finish.
            worker_id: the lease owner's name; host, PID and a random suffix by default.
            on_disable: called with ``(endpoint, reason)`` when a circuit breaker trips.
            file_check_s: how often an endpoint's certificate and key files are looked at
                for a renewal or rotation.
            metrics_interval_s: while metrics are on (see ``mtls_hooks.outbox._observe``),
                how often the queue depth gauges are refreshed (one grouped count).
            expiry_warn_days: log a warning when a loaded client certificate expires
                within this many days (checked when loaded, then daily).
            expiry_error_days: log an error within this many days.
            clock: epoch seconds, for schedules and the breaker; injected by tests.

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
        self.certificates = SenderCertificates(
            warn_within_s=check_seconds("expiry_warn_days", expiry_warn_days, zero=True) * DAY_S,
            error_within_s=check_seconds("expiry_error_days", expiry_error_days, zero=True) * DAY_S,
            clock=clock,
        )
        self.concurrency = concurrency
        self.batch = min(batch, concurrency)
        self._min_claim = max(1, self.batch // 2)
        self.worker_id = worker_id or (
            f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        )
        self._owns_store = isinstance(store, str)
        self.store: QueueStore = open_store(store, clock=clock) if isinstance(store, str) else store
        self._clock = clock
        self._on_disable = on_disable
        self.counts = WorkerCounts()
        self._senders = SenderPool(
            max_connections=concurrency,
            check_every_s=check_seconds("file_check_s", file_check_s, zero=True),
            on_build=self.certificates.loaded,
        )
        self._endpoints: dict[str, tuple[Endpoint | None, Target | None, float]] = {}
        self._policies: dict[str, tuple[Endpoint, RetryPolicy]] = {}
        self._streaks: set[str] = set()
        self._held: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: list[Settlement] = []
        self._stopping = False
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mtls-hooks-outbox")
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)

    @property
    def rebuilt_senders(self) -> int:
        """How many times a changed certificate, key or record rebuilt a sender."""
        return self._senders.rebuilt

    def __repr__(self) -> str:
        return f"DeliveryWorker({self.worker_id!r}, {self.store!r})"

    # -- running ----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to finish: no new claims, deliveries in flight get the grace."""
        self._stopping = True
        self._wake.set()

    async def run(self, *, until_idle: bool = False) -> WorkerCounts:
        """Deliver until :meth:`stop` (or, with ``until_idle``, until nothing is due).

        Returns:
            What this worker did.
        """
        loop = asyncio.get_running_loop()
        self._wake = wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mtls-hooks-outbox")

        def wake_up() -> None:  # from the store's threads
            loop.call_soon_threadsafe(wake.set)

        unsubscribe = self.store.subscribe(wake_up)
        settler = asyncio.create_task(self._settler())
        heartbeat = asyncio.create_task(self._heartbeat())
        watchers = [asyncio.create_task(self.certificates.alarm.run(interval_s=DAY_S))]
        metrics = current_metrics()
        if metrics is not None:
            depth = depth_loop(self.store, QUEUE, metrics, interval_s=self.metrics_interval_s,
                               call=self._call)  # fmt: skip
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
            await self._senders.aclose()
            self._executor.shutdown(wait=True)
            if self._owns_store:
                self.store.close()
        return self.counts

    async def _call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def _claim_loop(self, until_idle: bool) -> None:
        while not self._stopping:
            self._wake.clear()
            # Up to a batch more than the slots is claimed ahead: the next messages are
            # already here when a slot frees, so no slot idles while a claim runs.
            free = self.concurrency + self.batch - len(self._tasks)
            want = min(free, self.batch)
            if want >= self._min_claim or (want > 0 and not self._tasks):
                # Hand back what finished meanwhile in the same transaction as the claim.
                settled, self._pending = self._pending, []
                try:
                    jobs = await self._call(
                        self.store.claim,
                        QUEUE,
                        self.worker_id,
                        limit=want,
                        lease_s=self.lease_s,
                        settlements=settled,
                    )
                except StoreUnavailableError as exc:
                    _LOG.warning("outbox worker %s cannot claim: %s", self.worker_id, exc)
                    self._pending[:0] = settled
                    jobs = []
                else:
                    self._held.difference_update(s.job_id for s in settled)
                for job in jobs:
                    if job.id in self._held:
                        continue  # our own lease ran out and we took it again: still running
                    self._held.add(job.id)
                    task = asyncio.create_task(self._deliver(job))
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
        # completion cost a loop turn and a timer per delivery.
        if self.concurrency + self.batch - len(self._tasks) >= self._min_claim or not self._tasks:
            self._wake.set()
        if not task.cancelled() and task.exception() is not None:  # pragma: no cover - a bug
            _LOG.error("outbox delivery task failed", exc_info=task.exception())

    async def _drain(self) -> None:
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=self.shutdown_grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

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
                    _LOG.warning("outbox worker %s cannot settle: %s", self.worker_id, exc)
                    self._pending[:0] = batch
                    if self._stopping:
                        return  # their leases will expire: delivered again, deduped
                    await asyncio.sleep(self.poll_interval_s)
                    self._settled.set()
                    continue
                for settlement in batch:
                    self._held.discard(settlement.job_id)
                # A settled message may free the next of its FIFO key, or a slot: claim again.
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
                _LOG.warning("outbox worker %s cannot renew leases: %s", self.worker_id, exc)
                continue
            if renewed < len(held):
                # Settled meanwhile, or a lease already lost: the message may be in flight
                # at another worker too (documented; the receiver dedupes).
                self.counts.lost_leases += len(held) - renewed

    # -- one delivery -----------------------------------------------------------------

    async def _endpoint(self, name: str) -> tuple[Endpoint | None, Target | None]:
        cached = self._endpoints.get(name)
        now = time.monotonic()
        if cached is not None and now - cached[2] < _ENDPOINT_TTL_S:
            return cached[0], cached[1]
        target = await self._call(self.store.get_target, name)
        endpoint = None
        if target is not None:
            try:
                endpoint = Endpoint.from_config(name, target.config)
            except ConfigurationError as exc:
                _LOG.error("outbox endpoint %s has an unusable record: %s", name, exc)
        self._endpoints[name] = (endpoint, target, now)
        return endpoint, target

    def _policy(self, endpoint: Endpoint) -> RetryPolicy:
        cached = self._policies.get(endpoint.name)
        if cached is None or cached[0] != endpoint:
            cached = (endpoint, endpoint.retry.policy())
            self._policies[endpoint.name] = cached
        return cached[1]

    async def _deliver(self, job: Job) -> None:
        try:
            async with self._slots:
                if self._stopping:  # claimed ahead, never started: straight back
                    settlement = Settlement(job.id, "release", run_at=self._clock())
                    self.counts.released += 1
                else:
                    settlement = await self._attempt(job)
        except asyncio.CancelledError:
            # Shutdown past the grace: back to the queue, due now, no attempt counted.
            self._settle(Settlement(job.id, "release", run_at=self._clock()))
            self.counts.released += 1
            raise
        self._settle(settlement)

    async def _attempt(self, job: Job) -> Settlement:
        started = self._clock()
        number = job.tries + 1
        endpoint, _ = await self._endpoint(job.target)
        if endpoint is None:
            reason = f"endpoint {job.target!r} has no usable record"
            record = AttemptRecord(job.id, number, started, 0.0, "failed", None,
                                   "ConfigurationError", reason, self.worker_id)  # fmt: skip
            self.counts.failed += 1
            if (metrics := current_metrics()) is not None:
                record_attempt(metrics, job.target, "failed", finished="failed")
            return Settlement(job.id, "failed", error=reason, attempt=record)
        if endpoint.rate_limit_per_s is not None:
            wait_s = await self._call(
                self.store.take_token,
                endpoint.name,
                rate_per_s=endpoint.rate_limit_per_s,
                burst=endpoint.rate_burst,
            )
            if wait_s > 0:
                self.counts.released += 1
                return Settlement(job.id, "release", run_at=started + wait_s)
        try:
            sender = self._senders.acquire(endpoint)
        except ConfigurationError as exc:
            # Unreadable certificate or key files: an operator can fix them, so retry.
            failure = AttemptFailed(f"endpoint configuration: {exc}", retryable=True, kind="config")
            return await self._failed(
                job, endpoint, failure, started=started, error="ConfigurationError"
            )
        try:
            return await self._send(job, endpoint, sender, started)
        finally:
            await self._senders.release(sender)

    async def _send(
        self, job: Job, endpoint: Endpoint, sender: AsyncWebhookSender, started: float
    ) -> Settlement:
        try:
            # The job id is the webhook-id of every attempt; the body was fixed at enqueue.
            delivery = sender._start(endpoint.url, job.payload, None, job.id)
            await sender._attempt(delivery)
        except ConfigurationError as exc:  # a URL neither twin can use: no retry can help
            failure = AttemptFailed(str(exc), retryable=False, kind="url")
            return await self._failed(
                job, endpoint, failure, started=started, error="ConfigurationError"
            )
        except AttemptFailed as failure:
            tried = delivery.attempts[-1]
            return await self._failed(
                job,
                endpoint,
                failure,
                started=started,
                latency_s=tried.latency_s,
                status_code=tried.status_code,
                error=tried.error,
            )
        tried = delivery.attempts[-1]
        record = AttemptRecord(job.id, job.tries + 1, started, tried.latency_s, "done",
                               tried.status_code, None, "", self.worker_id)  # fmt: skip
        self.counts.delivered += 1
        if (metrics := current_metrics()) is not None:
            record_attempt(metrics, endpoint.name, "delivered", status_code=tried.status_code,
                           seconds=tried.latency_s, finished="delivered")  # fmt: skip
        if endpoint.breaker_window_s is not None:
            _, target = await self._endpoint(endpoint.name)
            if endpoint.name in self._streaks or (target is not None and target.failing_since):
                self._streaks.discard(endpoint.name)
                await self._call(self.store.note_success, endpoint.name)
        return Settlement(job.id, "done", attempt=record)

    async def _failed(
        self,
        job: Job,
        endpoint: Endpoint,
        failure: AttemptFailed,
        *,
        started: float,
        latency_s: float | None = None,
        status_code: int | None = None,
        error: str | None,
    ) -> Settlement:
        """Settle a failed attempt; ``latency_s`` is ``None`` when no request was sent."""
        now = self._clock()
        decision = decide(self._policy(endpoint), job, failure, now=now)
        record = AttemptRecord(job.id, job.tries + 1, started, latency_s or 0.0, decision.kind,
                               status_code, error, failure.detail, self.worker_id)  # fmt: skip
        if (metrics := current_metrics()) is not None:
            # A 410 is its own outcome: the receiver asked us to stop, no fault to chase.
            outcome = "gone" if failure.kind == "gone" else decision.kind
            record_attempt(metrics, endpoint.name, outcome, status_code=status_code,
                           seconds=latency_s,
                           finished=None if decision.kind == "retry" else outcome)  # fmt: skip
        if endpoint.breaker_window_s is not None:
            await self._trip(endpoint, endpoint.breaker_window_s)
        if decision.kind == "failed":
            self.counts.failed += 1
            _LOG.warning("outbox message %s to %s failed for good: %s", job.id, endpoint.name,
                         decision.reason)  # fmt: skip
            return Settlement(job.id, "failed", error=decision.reason, attempt=record)
        self.counts.retried += 1
        return Settlement(job.id, "retry", run_at=now + decision.wait_s,
                          error=decision.reason, attempt=record)  # fmt: skip

    async def _trip(self, endpoint: Endpoint, window_s: float) -> None:
        self._streaks.add(endpoint.name)
        tripped = await self._call(self.store.note_failure, endpoint.name, window_s=window_s)
        if not tripped:
            return
        reason = f"circuit breaker: every delivery failed for at least {window_s:g} s"
        _LOG.warning("outbox endpoint %s disabled: %s", endpoint.name, reason)
        self._endpoints.pop(endpoint.name, None)
        if self._on_disable is not None:
            called = self._on_disable(endpoint.name, reason)
            if inspect.isawaitable(called):
                await called
