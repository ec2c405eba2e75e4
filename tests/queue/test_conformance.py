"""One conformance suite for every queue store: memory, SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.queue import AttemptRecord, JobState, NewJob, QueueStore, Settlement
from tests.queue.conftest import FakeClock

Q = "outbox"


def job(target: str = "ep", payload: bytes = b"{}", **kwargs: object) -> NewJob:
    return NewJob(Q, target, payload, **kwargs)  # type: ignore[arg-type]


def attempt(job_id: str, number: int = 1, outcome: str = "done") -> AttemptRecord:
    return AttemptRecord(job_id, number, 0.0, 0.01, outcome, 200, None, "ok", "w1")


def claim_ids(store: QueueStore, owner: str = "w1", limit: int = 16) -> list[str]:
    return [j.id for j in store.claim(Q, owner, limit=limit, lease_s=600)]


def test_enqueue_is_idempotent_by_key_and_by_id(store: QueueStore) -> None:
    first, created = store.enqueue(job(idempotency_key="order-1", meta={"type": "a"}))
    again, created_again = store.enqueue(job(payload=b"other", idempotency_key="order-1"))
    assert (created, created_again) == (True, False)
    assert again == first
    same_id, created_by_id = store.enqueue(job(job_id=first))
    assert (same_id, created_by_id) == (first, False)
    other, _ = store.enqueue(job(idempotency_key="order-2"))
    assert other != first
    assert [j.id for j in store.jobs(Q)] == [first, other]
    stored = store.get(first)
    assert stored is not None
    assert (stored.payload, stored.meta, stored.state) == (b"{}", {"type": "a"}, JobState.PENDING)
    assert store.get("msg_unknown") is None


def test_enqueue_many_commits_in_order_with_keys_deduped(store: QueueStore) -> None:
    known, _ = store.enqueue(job(idempotency_key="k0"))
    results = store.enqueue_many(
        [
            job(idempotency_key="k1", payload=b"1"),
            job(idempotency_key="k0", payload=b"again"),  # known before the batch
            job(idempotency_key="k1", payload=b"twice"),  # repeated inside the batch
            job(payload=b"2"),
        ]
    )
    created = [c for _, c in results]
    assert created == [True, False, False, True]
    assert results[1][0] == known
    assert results[2][0] == results[0][0]
    assert [j.payload for j in store.jobs(Q)] == [b"{}", b"1", b"2"]
    assert store.enqueue_many([]) == []


def test_enqueue_many_is_all_or_none(store: QueueStore) -> None:
    with pytest.raises(ConfigurationError, match="JSON"):
        store.enqueue_many([job(idempotency_key="a"), job(meta={"when": object()})])
    assert store.jobs(Q) == []
    # The failed batch left its key unused.
    assert store.enqueue(job(idempotency_key="a"))[1] is True


def test_meta_must_be_json(store: QueueStore) -> None:
    with pytest.raises(ConfigurationError, match="JSON"):
        store.enqueue(job(meta={"when": object()}))
    assert store.jobs(Q) == []


def test_claim_takes_only_due_jobs_in_small_batches(store: QueueStore, clock: FakeClock) -> None:
    now_ids = [store.enqueue(job())[0] for _ in range(5)]
    later, _ = store.enqueue(job(run_at=clock.now + 60))
    assert claim_ids(store, limit=2) == now_ids[:2]
    assert claim_ids(store, limit=10) == now_ids[2:]
    assert claim_ids(store) == []
    clock.advance(60)
    assert claim_ids(store) == [later]


def test_a_lease_excludes_until_it_expires_and_fences_the_old_owner(
    store: QueueStore, clock: FakeClock
) -> None:
    job_id, _ = store.enqueue(job())
    [claimed] = store.claim(Q, "w1", limit=5, lease_s=30)
    assert (claimed.state, claimed.lease_owner) == (JobState.RUNNING, "w1")
    clock.advance(20)
    assert claim_ids(store, "w2") == []
    assert store.renew("w1", [job_id], 30) == 1  # heartbeat: now expires at +50
    clock.advance(29)
    assert claim_ids(store, "w2") == []
    clock.advance(2)
    [taken] = store.claim(Q, "w2", limit=5, lease_s=30)  # w1 looks dead: its lease ended
    assert taken.id == job_id
    # w1's attempt counts, lost: a job that kills its workers runs out of attempts too.
    assert (taken.attempts, taken.tries) == (1, 1)
    assert taken.last_error == "lease expired: its worker w1 stopped before settling it"
    # w1 comes back: its settlement no longer applies, but its attempt is history.
    assert store.settle("w1", [Settlement(job_id, "done", attempt=attempt(job_id))]) == 0
    assert store.renew("w1", [job_id], 30) == 0
    current = store.get(job_id)
    assert current is not None
    assert (current.state, current.lease_owner) == (JobState.RUNNING, "w2")
    assert [a.worker for a in store.history(job_id)] == ["w1"]
    assert store.settle("w2", [Settlement(job_id, "done", attempt=attempt(job_id, 2))]) == 1
    done = store.get(job_id)
    assert done is not None
    assert (done.state, done.attempts, done.tries, done.last_error) == (JobState.DONE, 2, 2, None)


def test_taking_back_ones_own_expired_lease_loses_no_attempt(
    store: QueueStore, clock: FakeClock
) -> None:
    job_id, _ = store.enqueue(job())
    store.claim(Q, "w1", limit=1, lease_s=30)
    clock.advance(31)  # w1's heartbeat came late: it takes its own job back, still running it
    [again] = store.claim(Q, "w1", limit=1, lease_s=30)
    assert (again.id, again.attempts, again.tries, again.last_error) == (job_id, 0, 0, None)


def test_a_claim_of_due_work_counts_no_attempt(store: QueueStore) -> None:
    store.enqueue(job())
    [claimed] = store.claim(Q, "w1", limit=1, lease_s=30)
    assert (claimed.attempts, claimed.tries, claimed.last_error) == (0, 0, None)


def test_settlements(store: QueueStore, clock: FakeClock) -> None:
    ids = [store.enqueue(job())[0] for _ in range(4)]
    claim_ids(store)
    done, retry, failed, release = ids
    held = store.settle(
        "w1",
        [
            Settlement(done, "done", attempt=attempt(done)),
            Settlement(retry, "retry", run_at=clock.now + 5, error="503", attempt=attempt(retry)),
            Settlement(failed, "failed", error="410 gone", attempt=attempt(failed)),
            Settlement(release, "release", run_at=clock.now),
        ],
    )
    assert held == 4
    got = {i: store.get(i) for i in ids}
    assert {i: (j.state, j.attempts, j.tries, j.last_error) for i, j in got.items() if j} == {
        done: (JobState.DONE, 1, 1, None),
        retry: (JobState.PENDING, 1, 1, "503"),
        failed: (JobState.FAILED, 1, 1, "410 gone"),
        release: (JobState.PENDING, 0, 0, None),
    }
    assert store.history(release) == []
    assert claim_ids(store) == [release]
    clock.advance(5)
    assert claim_ids(store) == [retry]


def test_fifo_key_runs_one_at_a_time_in_order(store: QueueStore, clock: FakeClock) -> None:
    a1, a2, a3 = (store.enqueue(job(fifo_key="a"))[0] for _ in range(3))
    b1, _ = store.enqueue(job(fifo_key="b"))
    free, _ = store.enqueue(job())
    assert claim_ids(store) == [a1, b1, free]
    assert claim_ids(store) == []  # a2 waits behind a1, running
    store.settle("w1", [Settlement(a1, "retry", run_at=clock.now + 10, attempt=attempt(a1))])
    assert claim_ids(store) == []  # a1's retry holds a2 back: order over throughput
    clock.advance(10)
    assert claim_ids(store) == [a1]
    store.settle("w1", [Settlement(a1, "done", attempt=attempt(a1, 2))])
    assert claim_ids(store) == [a2]
    store.settle("w1", [Settlement(a2, "failed", error="gone", attempt=attempt(a2))])
    assert claim_ids(store) == [a3]  # a dead letter does not block the key forever


def test_disabled_target_keeps_its_jobs_queued(store: QueueStore) -> None:
    store.put_target("ep", {"url": "https://a"})
    store.put_target("other", {"url": "https://b"})
    assert store.set_enabled("ep", False, reason="operator")
    job_id, _ = store.enqueue(job())
    other, _ = store.enqueue(job("other"))
    assert claim_ids(store) == [other]
    target = store.get_target("ep")
    assert target is not None
    assert (target.enabled, target.disabled_reason) == (False, "operator")
    assert store.set_enabled("ep", True)
    assert claim_ids(store) == [job_id]
    assert not store.set_enabled("nope", True)
    # Replacing a config keeps the state.
    store.set_enabled("ep", False)
    store.put_target("ep", {"url": "https://c"})
    assert store.get_target("ep") == type(target)("ep", {"url": "https://c"}, False, None, None)
    assert [t.name for t in store.targets()] == ["ep", "other"]


def test_requeue_and_purge(store: QueueStore, clock: FakeClock) -> None:
    ids = [store.enqueue(job("ep" if i < 2 else "other"))[0] for i in range(3)]
    claim_ids(store)
    store.settle("w1", [Settlement(i, "failed", error="x", attempt=attempt(i)) for i in ids])
    assert store.requeue(Q, job_ids=[ids[0], "msg_unknown"]) == 1
    requeued = store.get(ids[0])
    assert requeued is not None
    assert (requeued.state, requeued.attempts, requeued.tries) == (JobState.PENDING, 0, 1)
    assert store.requeue(Q, target="other") == 1
    assert store.requeue(Q) == 1
    assert store.requeue(Q) == 0
    assert sorted(claim_ids(store)) == sorted(ids)
    store.settle("w1", [Settlement(i, "done", attempt=attempt(i, 2)) for i in ids])
    fresh, _ = store.enqueue(job())
    clock.advance(100)
    assert store.purge(Q, older_than_s=200) == 0
    assert store.purge(Q, older_than_s=50) == 3
    assert [j.id for j in store.jobs(Q)] == [fresh]  # pending jobs are never purged
    assert store.history(ids[0]) == []
    with pytest.raises(ConfigurationError):
        store.purge(Q, older_than_s=-1)


def test_stats_and_listing(store: QueueStore, clock: FakeClock) -> None:
    assert store.stats(Q).oldest_due_age_s is None
    first, _ = store.enqueue(job("ep"))
    clock.advance(30)
    second, _ = store.enqueue(job("other"))
    store.enqueue(job("other", run_at=clock.now + 100))
    store.claim(Q, "w1", limit=1, lease_s=30)
    store.settle("w1", [Settlement(first, "failed", error="x", attempt=attempt(first))])
    stats = store.stats(Q)
    assert stats.by_state == {"pending": 2, "running": 0, "done": 0, "failed": 1}
    assert stats.by_target == {"ep": {"failed": 1}, "other": {"pending": 2}}
    assert stats.oldest_due_age_s == 0.0  # second was due just now; the third is not due
    clock.advance(7)
    assert store.stats(Q).oldest_due_age_s == 7.0
    assert [j.id for j in store.jobs(Q, state=JobState.FAILED)] == [first]
    assert [j.id for j in store.jobs(Q, target="other", limit=1)] == [second]
    assert store.jobs("inbox") == []


def test_circuit_breaker_window(store: QueueStore, clock: FakeClock) -> None:
    store.put_target("ep", {})
    assert not store.note_failure("ep", window_s=60)  # the streak starts
    clock.advance(59)
    assert not store.note_failure("ep", window_s=60)
    store.note_success("ep")  # a success ends the streak
    clock.advance(30)
    assert not store.note_failure("ep", window_s=60)
    clock.advance(60)
    assert store.note_failure("ep", window_s=60)  # failing for the whole window: off
    target = store.get_target("ep")
    assert target is not None
    assert not target.enabled
    assert "circuit breaker" in (target.disabled_reason or "")
    assert not store.note_failure("ep", window_s=60)  # already off: reported once
    assert not store.note_failure("unknown", window_s=1)


def test_token_bucket(store: QueueStore, clock: FakeClock) -> None:
    store.put_target("ep", {})
    assert [store.take_token("ep", rate_per_s=2, burst=3) for _ in range(3)] == [0.0] * 3
    assert store.take_token("ep", rate_per_s=2, burst=3) == pytest.approx(0.5)
    clock.advance(0.5)
    assert store.take_token("ep", rate_per_s=2, burst=3) == 0.0
    assert store.take_token("ep", rate_per_s=2, burst=3) == pytest.approx(0.5)
    clock.advance(100)  # refills up to the burst, no further
    assert [store.take_token("ep", rate_per_s=2, burst=3) > 0 for _ in range(4)] == [
        False,
        False,
        False,
        True,
    ]


def test_subscribers_wake_on_enqueue(store: QueueStore) -> None:
    woken = threading.Event()
    unsubscribe = store.subscribe(woken.set)
    store.enqueue(job())
    assert woken.wait(10)
    unsubscribe()


def test_a_claim_hands_back_settlements_in_the_same_transaction(store: QueueStore) -> None:
    first, _ = store.enqueue(job(fifo_key="k"))
    second, _ = store.enqueue(job(fifo_key="k"))
    assert claim_ids(store) == [first]
    # Settling the head and claiming in one call: the next of its key is free at once.
    settled = [Settlement(first, "done", attempt=attempt(first))]
    assert [j.id for j in store.claim(Q, "w1", limit=4, lease_s=60, settlements=settled)] == [
        second
    ]
    assert store.get(first).state is JobState.DONE  # type: ignore[union-attr]
    assert [a.outcome for a in store.history(first)] == ["done"]
