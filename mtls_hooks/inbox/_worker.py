"""The inbox worker: claims stored webhooks and runs their handlers, with retries.

The claim loop, settling, leases and shutdown are the queue engine's worker loop
(``mtls_hooks.queue._runner``), the one the outbox's delivery worker runs. One inbox job is
one handler run:

* the event is rebuilt from the job (``_envelope``): the same :class:`~mtls_hooks.WebhookEvent`
  the handler would have had in the request, peer identity included;
* the handler is found as the receiver finds it (endpoint and type, then the fallbacks); an
  event with none is settled ``done`` and counted ``unhandled``, as the direct mode
  acknowledges it;
* the handler runs inside ``context()`` (the receiver passes its Quart app's
  ``app_context``, so ``current_app`` works); its return value is ignored;
* a handler that raises is retried under :class:`~mtls_hooks.inbox._retry.InboxRetry` (the
  wait becomes the job's next ``run_at``) until its attempts are used, then dead-lettered;
  each run is recorded in the job's history with the exception's class and message.

Delivery to handlers is at least once: a worker killed after a handler finished but before
its settlement was written leaves the job to run again when the lease ends. Handlers key
their side effects on ``event.id``, as in the direct mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final, Unpack

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.core._events import HandlerTable, find_handler
from mtls_hooks.inbox._envelope import QUEUE, event_from_job
from mtls_hooks.inbox._retry import InboxRetry
from mtls_hooks.metrics._registry import current_metrics
from mtls_hooks.queue._protocol import AttemptRecord, Job, QueueStore, Settlement, check_seconds
from mtls_hooks.queue._runner import QueueWorker, RunnerCounts, RunnerOptions
from mtls_hooks.queue._schedule import lost_and_exhausted

__all__ = ["DEFAULT_HANDLER_TIMEOUT_S", "InboxCounts", "InboxWorker", "current_claim"]

_LOG = logging.getLogger("mtls_hooks.inbox")
#: How long one handler run may last by default: far beyond a sender's timeout (the reason
#: for the inbox), short enough that a hung handler gives its slot back.
DEFAULT_HANDLER_TIMEOUT_S: Final = 900.0

#: ``(job id, lease owner)`` of the inbox event whose handler is running in this context, for
#: :meth:`~mtls_hooks.inbox.Inbox.transactional`; ``None`` outside an inbox worker.
current_claim: ContextVar[tuple[str, str] | None] = ContextVar(
    "mtls_hooks_inbox_claim", default=None
)


@dataclass
class InboxCounts(RunnerCounts):
    """What an inbox worker did since it started."""

    handled: int = 0
    unhandled: int = 0
    retried: int = 0
    failed: int = 0


def _no_context() -> AbstractAsyncContextManager[Any]:
    return contextlib.nullcontext()


class InboxWorker(QueueWorker[InboxCounts]):
    """Runs the handlers of stored webhooks until stopped; see the module docstring.

    Example::

        worker = InboxWorker("sqlite:///inbox.sqlite3", receiver.handlers)
        await worker.run()  # until worker.stop()
    """

    queue = QUEUE
    logger = _LOG
    what = "inbox worker"

    def __init__(
        self,
        store: QueueStore | str,
        handlers: HandlerTable,
        *,
        retry: InboxRetry | None = None,
        context: Callable[[], AbstractAsyncContextManager[Any]] = _no_context,
        handler_timeout_s: float | None = DEFAULT_HANDLER_TIMEOUT_S,
        **options: Unpack[RunnerOptions],
    ) -> None:
        """Configure a worker; nothing runs until :meth:`run`.

        Args:
            store: a :class:`~mtls_hooks.queue.QueueStore` or a store URL.
            handlers: handlers by ``(endpoint, event type)``, as the receiver registers them
                (read live: handlers registered later are found).
            retry: when a handler that raised runs again; :class:`InboxRetry` by default.
            context: entered around each handler run (the Quart app's ``app_context``).
            handler_timeout_s: a run that lasts longer fails (and is retried, or
                dead-lettered); ``None``: no bound. A sync handler's thread runs on after it.
            options: the worker loop's settings (:class:`~mtls_hooks.queue._runner.
                RunnerOptions`: ``concurrency``, 8 handlers at once by default, ``lease_s``,
                ``poll_interval_s``, ``shutdown_grace_s``, ``clock``...).

        Raises:
            ConfigurationError: a bad number or store URL.
            StoreUnavailableError: the database cannot be reached.
        """
        options.setdefault("concurrency", 8)
        super().__init__(store, counts=InboxCounts(), **options)
        self._handlers = handlers
        self.retry = InboxRetry() if retry is None else retry
        self.handler_timeout_s = (
            None
            if handler_timeout_s is None
            else check_seconds("handler_timeout_s", handler_timeout_s)
        )
        self._context = context

    async def _process(self, job: Job) -> Settlement:
        started = self._clock()
        number = job.tries + 1
        try:
            event = event_from_job(job)
        except ConfigurationError as exc:
            # A row this version cannot read: no retry can help; the dead letter shows it.
            return self._give_up(job, number, started, "ConfigurationError", str(exc))
        if lost_and_exhausted(self.retry.stop, job, now=started):
            # Its workers kept dying under it: the last lost attempt was its last allowed.
            reason = f"gave up after {job.attempts} attempt(s): {job.last_error}"
            return self._give_up(job, job.tries, started, "LostAttemptError", reason)
        handler = find_handler(self._handlers, job.target, event.type)
        if handler is None:
            self.counts.unhandled += 1
            self._record(job.target, "unhandled", None)
            record = AttemptRecord(job.id, number, started, 0.0, "done", None, None,
                                   "no handler for this event type", self.worker_id)  # fmt: skip
            return Settlement(job.id, "done", attempt=record)
        began = time.perf_counter()
        claim = current_claim.set((job.id, self.worker_id))
        bound = asyncio.timeout(self.handler_timeout_s)
        try:
            async with self._context(), bound:
                await handler(event)
        except Exception as exc:
            latency_s = time.perf_counter() - began
            failure = exc
            if bound.expired():
                # A hung handler: its run fails (and is retried) rather than holding a slot
                # and a renewed lease forever. A sync handler's thread cannot be stopped.
                failure = TimeoutError(f"the handler ran longer than {self.handler_timeout_s:g} s")
            return self._failed(job, failure, started=started, latency_s=latency_s)
        finally:
            current_claim.reset(claim)
        latency_s = time.perf_counter() - began
        self.counts.handled += 1
        self._record(job.target, "handled", latency_s)
        record = AttemptRecord(job.id, number, started, latency_s, "done", None, None, "",
                               self.worker_id)  # fmt: skip
        return Settlement(job.id, "done", attempt=record)

    def _give_up(
        self, job: Job, number: int, started: float, error: str, reason: str
    ) -> Settlement:
        """Dead-letter ``job`` without running its handler (attempt ``number``)."""
        self.counts.failed += 1
        self._record(job.target, "failed", None)
        _LOG.error("inbox event %s on %s dead-lettered: %s", job.id, job.target, reason)
        record = AttemptRecord(job.id, number, started, 0.0, "failed", None, error, reason,
                               self.worker_id)  # fmt: skip
        return Settlement(job.id, "failed", error=reason, attempt=record)

    def _failed(self, job: Job, exc: Exception, *, started: float, latency_s: float) -> Settlement:
        now = self._clock()
        decision = self.retry.decide(job, exc, now=now)
        record = AttemptRecord(job.id, job.tries + 1, started, latency_s, decision.kind, None,
                               type(exc).__name__, decision.reason, self.worker_id)  # fmt: skip
        self._record(job.target, decision.kind, latency_s)
        if decision.kind == "failed":
            self.counts.failed += 1
            _LOG.error(
                "inbox event %s on %s dead-lettered: %s", job.id, job.target, decision.reason,
                exc_info=exc,
            )  # fmt: skip
            return Settlement(job.id, "failed", error=decision.reason, attempt=record)
        self.counts.retried += 1
        _LOG.warning(
            "inbox event %s on %s failed (attempt %d), retry in %.1f s: %s",
            job.id, job.target, job.attempts + 1, decision.wait_s, decision.reason,
            exc_info=exc,
        )  # fmt: skip
        return Settlement(job.id, "retry", run_at=now + decision.wait_s,
                          error=decision.reason, attempt=record)  # fmt: skip

    @staticmethod
    def _record(endpoint: str, outcome: str, seconds: float | None) -> None:
        metrics = current_metrics()
        if metrics is not None:
            metrics.inbox_attempt(endpoint=endpoint, outcome=outcome, seconds=seconds)
