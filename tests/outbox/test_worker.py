"""The delivery worker against a real receiver over mTLS: delivery, retries, dead letter."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from mtls_hooks.core._identity import PeerIdentity
from mtls_hooks.core._keys_signing import HmacSecret
from mtls_hooks.outbox import DeliveryWorker, Endpoint, Outbox
from mtls_hooks.queue import Job, JobState, QueueStore, open_store
from mtls_hooks.testing import running_server
from tests.outbox.conftest import FakeClock, OutboxPki, Receiver, fast_retry
from tests.outbox.receiver_app import build_app, read_log


def run(worker: DeliveryWorker) -> None:
    asyncio.run(asyncio.wait_for(worker.run(until_idle=True), 60))


def test_delivers_each_message_once_with_its_id_as_webhook_id(
    store_url: str, pki: OutboxPki, receiver: Receiver
) -> None:
    store = open_store(store_url)
    outbox = Outbox(store)
    outbox.add_endpoint(pki.endpoint("billing", receiver.url()))
    ids = [outbox.enqueue("billing", {"n": n}, event_type="invoice.paid") for n in range(30)]
    counts = asyncio.run(DeliveryWorker(store, concurrency=8).run(until_idle=True))
    assert counts.delivered == 30
    seen = receiver.seen()
    assert sorted(seen["handled"]) == sorted(ids)
    assert seen["overlap"] == []
    assert outbox.status().by_state == {"pending": 0, "running": 0, "done": 30, "failed": 0}
    job, attempts = outbox.show(ids[0])
    assert job.state is JobState.DONE
    assert [(a.number, a.outcome, a.status_code) for a in attempts] == [(1, "done", 204)]
    store.close()


def test_gone_endpoint_is_dead_lettered_at_once_then_replayed_when_fixed(
    pki: OutboxPki, receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'q.sqlite3'}")
    outbox = Outbox(store)
    outbox.add_endpoint(pki.endpoint("billing", receiver.url("/gone"), retry=fast_retry()))
    message_id = outbox.enqueue("billing", {"n": 1}, event_type="invoice.paid")
    with caplog.at_level(logging.WARNING, "mtls_hooks.outbox"):
        run(DeliveryWorker(store))
    job, attempts = outbox.show(message_id)
    assert job.state is JobState.FAILED
    assert "endpoint gone (410)" in (job.last_error or "")
    assert [(a.outcome, a.status_code) for a in attempts] == [("failed", 410)]
    assert f"outbox message {message_id} to billing failed for good" in caplog.text
    assert [j.id for j in outbox.messages(state=JobState.FAILED)] == [message_id]
    # The operator fixes the endpoint, then replays the dead letter.
    outbox.add_endpoint(pki.endpoint("billing", receiver.url(), retry=fast_retry()))
    assert outbox.retry([message_id]) == 1
    run(DeliveryWorker(store))
    job, attempts = outbox.show(message_id)
    assert job.state is JobState.DONE
    assert [(a.number, a.status_code) for a in attempts] == [(1, 410), (2, 204)]
    assert receiver.seen()["handled"] == [message_id]
    store.close()


def test_retryable_failures_exhaust_the_policy_with_full_history(
    pki: OutboxPki, receiver: Receiver, tmp_path: Path
) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'q.sqlite3'}")
    outbox = Outbox(store)
    outbox.add_endpoint(pki.endpoint("billing", receiver.url("/broken"), retry=fast_retry()))
    message_id = outbox.enqueue("billing", {"n": 1}, event_type="invoice.paid")
    run(DeliveryWorker(store))
    job, attempts = outbox.show(message_id)
    assert job.state is JobState.FAILED
    assert (job.last_error or "").startswith("gave up after 3 attempt(s) (attempt limit)")
    assert [(a.number, a.outcome, a.status_code) for a in attempts] == [
        (1, "retry", 500),
        (2, "retry", 500),
        (3, "failed", 500),
    ]
    # Every attempt used the same webhook-id.
    assert receiver.seen()["request"] == [message_id] * 3
    store.close()


def test_next_attempt_is_scheduled_not_slept(
    pki: OutboxPki, receiver: Receiver, tmp_path: Path, clock: FakeClock
) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'q.sqlite3'}", clock=clock)
    outbox = Outbox(store, clock=clock)
    retry = fast_retry(initial_wait_s=30.0, multiplier=2.0, max_attempts=5)
    outbox.add_endpoint(pki.endpoint("billing", receiver.url("/broken"), retry=retry))
    message_id = outbox.enqueue("billing", {"n": 1}, event_type="invoice.paid")
    run(DeliveryWorker(store, clock=clock))  # returns: nothing else is due
    job = store.get(message_id)
    assert job is not None
    assert (job.state, job.attempts, job.run_at) == (JobState.PENDING, 1, clock.now + 30)
    clock.advance(29)
    run(DeliveryWorker(store, clock=clock))
    assert store.get(message_id).attempts == 1  # type: ignore[union-attr]
    clock.advance(1)
    run(DeliveryWorker(store, clock=clock))
    job = store.get(message_id)
    assert job is not None
    assert (job.attempts, job.run_at) == (2, clock.now + 60)  # backoff: 30 s, then 60 s
    store.close()


def test_an_unpinned_receiver_is_dead_lettered_at_once(
    pki: OutboxPki, receiver: Receiver, tmp_path: Path
) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'q.sqlite3'}")
    outbox = Outbox(store)
    other_pin = pki.client.spki_pin  # a real pin, not the receiver's
    outbox.add_endpoint(pki.endpoint("billing", receiver.url(), pins=(other_pin,)))
    message_id = outbox.enqueue("billing", {"n": 1}, event_type="invoice.paid")
    run(DeliveryWorker(store))
    job, attempts = outbox.show(message_id)
    assert job.state is JobState.FAILED
    assert "not in pins" in (job.last_error or "")
    assert len(attempts) == 1
    assert receiver.seen()["request"] == []
    store.close()


def test_fifo_endpoint_delivers_in_enqueue_order(
    pki: OutboxPki, receiver: Receiver, tmp_path: Path
) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'q.sqlite3'}?synchronous=normal")
    outbox = Outbox(store)
    outbox.add_endpoint(pki.endpoint("ordered", receiver.url(), fifo=True))
    outbox.add_endpoint(pki.endpoint("loose", receiver.url()))
    ordered = [outbox.enqueue("ordered", {"n": n}, event_type="e") for n in range(15)]
    loose = [outbox.enqueue("loose", {"n": n}, event_type="e") for n in range(15)]
    run(DeliveryWorker(store, concurrency=8))
    handled = receiver.seen()["handled"]
    assert [i for i in handled if i in set(ordered)] == ordered
    assert sorted(i for i in handled if i in set(loose)) == sorted(loose)
    store.close()


def test_renewed_client_certificate_and_rotated_key_apply_without_restart(
    pki: OutboxPki, tmp_path: Path
) -> None:
    renewed = pki.ca.issue_client(common_name="outbox-sender-renewed")
    new_secret = HmacSecret.generate().export()
    tls = tmp_path / "tls"
    tls.mkdir()
    for name in ("client.pem", "client.key"):
        (tls / name).write_bytes(Path(pki.path(name)).read_bytes())
    keys = tls / "keys.txt"
    keys.write_text(pki.secret + "\n")
    log = tmp_path / "receiver.log"
    # /hooks/only trusts the new signing key alone; the handshake admits both client keys.
    app = build_app(pki.secret, log, only_secret=new_secret)
    store = open_store(f"sqlite:///{tmp_path / 'q.sqlite3'}")
    outbox = Outbox(store)
    with running_server(app, pki.server_config(pki.client, renewed)) as server:
        endpoint = Endpoint(
            name="billing",
            url=f"https://localhost:{server.port}/hooks/only",
            ca_file=pki.path("ca.pem"),
            cert_file=str(tls / "client.pem"),
            key_file=str(tls / "client.key"),
            signing_keys=(f"file:{keys}",),
            pins=(pki.server.spki_pin,),
        )
        outbox.add_endpoint(endpoint)
        worker = DeliveryWorker(store, file_check_s=0.0)

        async def scenario() -> tuple[str, str]:
            task = asyncio.create_task(worker.run())
            old = await asyncio.to_thread(outbox.enqueue, "billing", {"n": 1}, event_type="t")
            await wait_for_state(store, old, JobState.FAILED)  # the old key: 401, final
            # Renewal and rotation, written in place while the worker runs.
            renewed.chain_pem.write_to_path(tls / "client.pem", force=True)
            renewed.private_key_pem().write_to_path(tls / "client.key", force=True)
            keys.write_text(new_secret + "\n")
            new = await asyncio.to_thread(outbox.enqueue, "billing", {"n": 2}, event_type="t")
            await wait_for_state(store, new, JobState.DONE)
            worker.stop()
            await task
            return old, new

        old, new = asyncio.run(scenario())
    _, attempts = outbox.show(old)
    assert [a.status_code for a in attempts] == [401]
    assert read_log(log)["peer"] == [f"{new}={PeerIdentity.from_certificate(renewed.certificate)}"]
    store.close()


async def wait_for_state(store: QueueStore, job_id: str, state: JobState) -> None:
    for _ in range(2000):
        job = await asyncio.to_thread(store.get, job_id)
        if job is not None and job.state is state:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"{job_id} never reached {state}")


def test_heartbeat_keeps_a_long_delivery_from_a_second_worker(
    pki: OutboxPki, tmp_path: Path
) -> None:
    lease_s = 0.6
    hold = tmp_path / "hold"
    hold.touch()
    log = tmp_path / "receiver.log"
    url = f"sqlite:///{tmp_path / 'q.sqlite3'}?synchronous=normal"
    store, other = open_store(url), open_store(url)
    claims_after: list[float] = []
    real_claim = other.claim

    def counting_claim(*args: object, **kwargs: object) -> list[Job]:
        claims_after.append(time.monotonic())
        return real_claim(*args, **kwargs)  # type: ignore[arg-type]

    other.claim = counting_claim  # type: ignore[method-assign]  # a seam: count the claims
    with running_server(build_app(pki.secret, log, hold), pki.server_config()) as server:
        outbox = Outbox(store)
        outbox.add_endpoint(pki.endpoint("billing", f"https://localhost:{server.port}/hooks"))
        message_id = outbox.enqueue("billing", {"n": 1}, event_type="t")
        # The first worker does not poll (its heartbeat alone must keep the lease); the
        # second polls all the time, ready to take over any lease that ends.
        first = DeliveryWorker(store, lease_s=lease_s, poll_interval_s=30.0)
        second = DeliveryWorker(other, lease_s=lease_s, poll_interval_s=0.05)

        async def scenario() -> None:
            runs = [asyncio.create_task(first.run())]
            for _ in range(2000):  # the request is held open at the receiver
                if read_log(log)["entered"]:
                    break
                await asyncio.sleep(0.01)
            runs.append(asyncio.create_task(second.run()))
            held_since = time.monotonic()
            # Several leases pass while the second worker keeps claiming: it gets nothing,
            # because the first one renews its lease.
            for _ in range(2000):
                if [t for t in claims_after if t > held_since + 4 * lease_s]:
                    break
                await asyncio.sleep(0.01)
            hold.unlink()
            await wait_for_state(store, message_id, JobState.DONE)
            for w in (first, second):
                w.stop()
            await asyncio.gather(*runs)

        asyncio.run(asyncio.wait_for(scenario(), 60))
    seen = read_log(log)
    assert seen["request"] == [message_id]  # one delivery, never a second in flight
    assert first.counts.delivered == 1
    assert second.counts.delivered == 0
    store.close()
    other.close()


@pytest.mark.parametrize(("lost", "delivered"), [(2, True), (3, False)], ids=["2-lost", "3-lost"])
def test_a_message_that_kills_its_workers_uses_up_its_attempts(
    pki: OutboxPki, receiver: Receiver, tmp_path: Path, lost: int, delivered: bool
) -> None:
    clock = FakeClock()
    store = open_store(f"sqlite:///{tmp_path / 'q.sqlite3'}", clock=clock)
    outbox = Outbox(store, clock=clock)
    outbox.add_endpoint(pki.endpoint("billing", receiver.url(), retry=fast_retry(max_attempts=3)))
    message_id = outbox.enqueue("billing", {"n": 1}, event_type="invoice.paid")
    for n in range(lost):  # each worker dies holding it (OOM, a crash): never settled
        store.claim("outbox", f"doomed-{n}", limit=1, lease_s=30)
        clock.advance(31)
    counts = asyncio.run(DeliveryWorker(store, clock=clock).run(until_idle=True))
    job, attempts = outbox.show(message_id)
    if delivered:  # two of three attempts lost: the third runs and delivers
        assert (counts.delivered, job.state, job.tries) == (1, JobState.DONE, 3)
        assert [(a.number, a.outcome) for a in attempts] == [(3, "done")]
        assert receiver.seen()["handled"] == [message_id]
    else:  # all three lost: dead-lettered without a fourth try
        assert (counts.failed, job.state) == (1, JobState.FAILED)
        assert job.last_error == (
            "gave up after 3 attempt(s): lease expired: its worker doomed-2 stopped before "
            "settling it"
        )
        assert [(a.number, a.outcome, a.error) for a in attempts] == [
            (3, "failed", "LostAttemptError")
        ]
        assert receiver.seen()["handled"] == []
    store.close()
