"""The delivery worker: claims due outbox messages and delivers them with the async sender.

The claim loop, the settler, the heartbeat and the shutdown are the queue engine's worker
loop (``mtls_hooks.queue._runner``); this module is what one outbox job is:

* exactly one attempt with the endpoint's sender (the same signing, pinning, answer cap and
  failure classification as ``send``), turned into a settlement: ``done``, ``retry`` at the
  policy's next time (see ``_schedule``), ``failed`` (the dead letter) or ``release`` (a
  rate limit said "later");
* per endpoint, a circuit breaker and a shared rate limit, read from the endpoint records;
* an expiry alarm watches the client certificates loaded (``_observe``: what each attempt
  and delivery records).

:meth:`DeliveryWorker.stop` (the CLI calls it on SIGTERM) stops claiming, lets the
deliveries in flight finish for up to ``shutdown_grace_s``, releases the rest to the queue
and writes every settlement before :meth:`run` returns. A ``kill -9`` loses nothing either:
the dead worker's messages come back when their leases expire, and are delivered again with
the same ``webhook-id``, which the receiver dedupes.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final, Unpack

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.metrics._expiry import DAY_S
from mtls_hooks.metrics._registry import current_metrics
from mtls_hooks.outbox._endpoint import Endpoint
from mtls_hooks.outbox._observe import SenderCertificates, record_attempt
from mtls_hooks.outbox._outbox import QUEUE
from mtls_hooks.outbox._schedule import decide
from mtls_hooks.outbox._senders import SenderPool
from mtls_hooks.queue._protocol import (
    AttemptRecord,
    Job,
    QueueStore,
    Settlement,
    Target,
    check_seconds,
)
from mtls_hooks.queue._runner import QueueWorker, RunnerCounts, RunnerOptions
from mtls_hooks.queue._schedule import lost_and_exhausted
from mtls_hooks.sender._async import AsyncWebhookSender
from mtls_hooks.sender._retry import AttemptFailed, RetryPolicy

__all__ = ["DeliveryWorker", "WorkerCounts"]

_LOG = logging.getLogger("mtls_hooks.outbox")
# An endpoint record is read again after this long: an edit or a disable applies soon.
_ENDPOINT_TTL_S: Final = 2.0


@dataclass
class WorkerCounts(RunnerCounts):
    """What a worker did since it started."""

    delivered: int = 0
    retried: int = 0
    failed: int = 0


class DeliveryWorker(QueueWorker[WorkerCounts]):
    """Delivers outbox messages until stopped; see the module docstring.

    Example::

        worker = DeliveryWorker("postgresql://app@db/app", concurrency=32)
        await worker.run()  # until worker.stop()
    """

    queue = QUEUE
    logger = _LOG
    what = "outbox worker"

    def __init__(
        self,
        store: QueueStore | str,
        *,
        on_disable: Callable[[str, str], Any] | None = None,
        file_check_s: float = 2.0,
        expiry_warn_days: float = 30.0,
        expiry_error_days: float = 7.0,
        **options: Unpack[RunnerOptions],
    ) -> None:
        """Configure a worker; nothing runs until :meth:`run`.

        Args:
            store: a :class:`~mtls_hooks.queue.QueueStore` or a store URL.
            on_disable: called with ``(endpoint, reason)`` when a circuit breaker trips.
            file_check_s: how often an endpoint's certificate and key files are looked at
                for a renewal or rotation.
            expiry_warn_days: log a warning when a loaded client certificate expires
                within this many days (checked when loaded, then daily).
            expiry_error_days: log an error within this many days.
            options: the worker loop's settings (:class:`~mtls_hooks.queue._runner.
                RunnerOptions`): ``concurrency`` (deliveries in flight, 16 by default, also
                each sender's pool size), ``batch``, ``lease_s`` (a crashed worker's
                messages are delivered again after it), ``poll_interval_s``,
                ``shutdown_grace_s``, ``worker_id``, ``metrics_interval_s`` (the queue
                depth gauges, see ``mtls_hooks.outbox._observe``) and ``clock`` (schedules
                and the breaker; injected by tests).

        Raises:
            ConfigurationError: a bad number or store URL.
            StoreUnavailableError: the database cannot be reached.
        """
        super().__init__(store, counts=WorkerCounts(), **options)
        self.certificates = SenderCertificates(
            warn_within_s=check_seconds("expiry_warn_days", expiry_warn_days, zero=True) * DAY_S,
            error_within_s=check_seconds("expiry_error_days", expiry_error_days, zero=True) * DAY_S,
            clock=self._clock,
        )
        self._senders = SenderPool(
            max_connections=self.concurrency,
            check_every_s=check_seconds("file_check_s", file_check_s, zero=True),
            on_build=self.certificates.loaded,
        )
        self._on_disable = on_disable
        self._endpoints: dict[str, tuple[Endpoint | None, Target | None, float]] = {}
        self._policies: dict[str, tuple[Endpoint, RetryPolicy]] = {}
        self._streaks: set[str] = set()

    @property
    def rebuilt_senders(self) -> int:
        """How many times a changed certificate, key or record rebuilt a sender."""
        return self._senders.rebuilt

    def _watchers(self) -> list[Coroutine[Any, Any, None]]:
        return [self.certificates.alarm.run(interval_s=DAY_S)]

    async def _closing(self) -> None:
        await self._senders.aclose()

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

    async def _process(self, job: Job) -> Settlement:
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
        if lost_and_exhausted(self._policy(endpoint).stop, job, now=started):
            # Its workers kept dying under it: the last lost attempt was its last allowed.
            reason = f"gave up after {job.attempts} attempt(s): {job.last_error}"
            record = AttemptRecord(job.id, job.tries, started, 0.0, "failed", None,
                                   "LostAttemptError", reason, self.worker_id)  # fmt: skip
            self.counts.failed += 1
            _LOG.warning("outbox message %s to %s failed for good: %s", job.id, job.target, reason)
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
