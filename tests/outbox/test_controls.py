"""Circuit breaker and per-endpoint rate limit, shown with an injected clock."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from mtls_hooks.outbox import DeliveryWorker, Outbox
from mtls_hooks.queue import JobState, QueueStore, open_store
from tests.outbox.conftest import FakeClock, OutboxPki, Receiver, fast_retry


def run(store: QueueStore, clock: FakeClock, **options: object) -> None:
    worker = DeliveryWorker(store, clock=clock, **options)  # type: ignore[arg-type]
    asyncio.run(asyncio.wait_for(worker.run(until_idle=True), 60))  # bounded, whatever breaks


def test_breaker_disables_after_a_window_of_failures_and_new_messages_wait(
    pki: OutboxPki,
    receiver: Receiver,
    tmp_path: Path,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'q.sqlite3'}", clock=clock)
    outbox = Outbox(store, clock=clock)
    retry = fast_retry(initial_wait_s=30.0, max_attempts=100)
    broken = pki.endpoint("billing", receiver.url("/broken"), retry=retry, breaker_window_s=60.0)
    outbox.add_endpoint(broken)
    first = outbox.enqueue("billing", {"n": 1}, event_type="t")
    disabled: list[tuple[str, str]] = []
    run(store, clock, on_disable=lambda name, why: disabled.append((name, why)))
    clock.advance(30)
    run(store, clock, on_disable=lambda name, why: disabled.append((name, why)))
    assert disabled == []  # failing for 30 s of a 60 s window
    assert outbox.endpoint("billing").enabled
    clock.advance(30)
    with caplog.at_level(logging.WARNING, "mtls_hooks.outbox"):
        run(store, clock, on_disable=lambda name, why: disabled.append((name, why)))
    assert disabled == [("billing", "circuit breaker: every delivery failed for at least 60 s")]
    assert "outbox endpoint billing disabled: circuit breaker" in caplog.text
    status = outbox.endpoint("billing")
    assert not status.enabled
    assert (status.disabled_reason or "").startswith("circuit breaker")
    # Disabled: new messages queue up, due ones stay put, nothing is sent.
    second = outbox.enqueue("billing", {"n": 2}, event_type="t")
    clock.advance(3600)
    requests = len(receiver.seen()["request"])
    run(store, clock)
    assert len(receiver.seen()["request"]) == requests == 3
    assert outbox.status().by_state["pending"] == 2
    # The operator fixes and enables it: both go out.
    outbox.add_endpoint(pki.endpoint("billing", receiver.url(), breaker_window_s=60.0))
    outbox.enable("billing")
    run(store, clock)
    assert sorted(receiver.seen()["handled"]) == sorted([first, second])
    assert outbox.endpoint("billing").failing_since is None
    store.close()


def test_a_success_resets_the_breaker(
    pki: OutboxPki, receiver: Receiver, tmp_path: Path, clock: FakeClock
) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'q.sqlite3'}", clock=clock)
    outbox = Outbox(store, clock=clock)
    retry = fast_retry(initial_wait_s=50.0, max_attempts=100)
    outbox.add_endpoint(
        pki.endpoint("billing", receiver.url("/broken"), retry=retry, breaker_window_s=60.0)
    )
    outbox.enqueue("billing", {"n": 1}, event_type="t")
    run(store, clock)  # the streak starts
    assert outbox.endpoint("billing").failing_since == clock.now
    outbox.add_endpoint(pki.endpoint("billing", receiver.url(), retry=retry, breaker_window_s=60.0))
    clock.advance(50)
    run(store, clock)  # delivered: the streak ends
    assert outbox.endpoint("billing").failing_since is None
    store.close()


def test_rate_limit_holds_across_workers(
    pki: OutboxPki, receiver: Receiver, tmp_path: Path, clock: FakeClock
) -> None:
    url = f"sqlite:///{tmp_path / 'q.sqlite3'}"
    store, other = open_store(url, clock=clock), open_store(url, clock=clock)
    outbox = Outbox(store, clock=clock)
    outbox.add_endpoint(pki.endpoint("billing", receiver.url(), rate_limit_per_s=2.0, rate_burst=2))
    outbox.add_endpoint(pki.endpoint("free", receiver.url()))
    limited = [outbox.enqueue("billing", {"n": n}, event_type="t") for n in range(6)]
    free = [outbox.enqueue("free", {"n": n}, event_type="t") for n in range(4)]
    # Two workers, each with its own store object, at one instant: 2 tokens between them.
    run(store, clock, concurrency=4)
    run(other, clock, concurrency=4)
    handled = receiver.seen()["handled"]
    assert len([i for i in handled if i in limited]) == 2
    assert sorted(i for i in handled if i in free) == sorted(free)  # not slowed
    waiting = outbox.messages(state=JobState.PENDING)
    assert len(waiting) == 4
    assert all(job.attempts == 0 for job in waiting)  # a rate-limit wait is not an attempt
    assert all(clock.now < job.run_at <= clock.now + 2.0 for job in waiting)
    clock.advance(0.5)  # one more token
    run(other, clock, concurrency=4)
    assert len([i for i in receiver.seen()["handled"] if i in limited]) == 3
    clock.advance(10)  # the bucket refills to its burst, no further
    run(store, clock, concurrency=4)
    assert len([i for i in receiver.seen()["handled"] if i in limited]) == 5
    clock.advance(10)
    run(store, clock, concurrency=4)
    assert sorted(i for i in receiver.seen()["handled"] if i in limited) == sorted(limited)
    store.close()
    other.close()
