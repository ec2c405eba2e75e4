"""The depth gauges of a queue, refreshed by every worker that runs it.

* ``mtls_hooks_queue_messages{queue, state}`` and
  ``mtls_hooks_queue_oldest_due_age_seconds{queue}``: from one grouped ``COUNT``
  (:meth:`~mtls_hooks.queue.QueueStore.stats`, the figures of ``mtls-hooks outbox status``
  and ``mtls-hooks inbox status``) every ``interval_s``, whatever the queue's size.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mtls_hooks.metrics._registry import Metrics
from mtls_hooks.queue._protocol import JobState, QueueStats, QueueStore, StoreUnavailableError

__all__ = ["depth_loop", "record_depth"]

_LOG = logging.getLogger("mtls_hooks.queue")


def record_depth(metrics: Metrics, stats: QueueStats, queue: str) -> None:
    """Set the depth gauges of ``queue`` from one :meth:`QueueStore.stats` reading."""
    for state in JobState:
        metrics.queue_messages.child(queue, state.value).set(stats.by_state.get(state.value, 0))
    oldest = stats.oldest_due_age_s
    metrics.queue_oldest_due_age.child(queue).set(0.0 if oldest is None else oldest)


async def depth_loop(
    store: QueueStore,
    queue: str,
    metrics: Metrics,
    *,
    interval_s: float,
    call: Callable[..., Awaitable[Any]],
) -> None:
    """Refresh the depth gauges every ``interval_s`` until cancelled.

    ``call`` runs the blocking store method off the event loop. A store that cannot be
    reached leaves the last reading in place and is tried again next time.
    """
    while True:
        try:
            stats = await call(store.stats, queue)
        except StoreUnavailableError as exc:
            _LOG.warning("%s depth not refreshed: %s", queue, exc)
        else:
            record_depth(metrics, stats, queue)
        await asyncio.sleep(interval_s)
