"""The guarantees, with real processes: kill -9 loses nothing; two workers never overlap.

The receiver is ``mtls-hooks serve`` with SQLite dedupe, the workers ``mtls-hooks deliver``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtls_hooks.outbox import Outbox
from tests.outbox.conftest import OutboxPki, fast_retry
from tests.outbox.processes import serve_receiver, start_worker, wait_until
from tests.outbox.receiver_app import read_log
from tests.queue.conftest import pg_schema

EVENTS = 200
pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", "postgresql"])
def durable_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'outbox.sqlite3'}"
    else:
        with pg_schema() as url:
            yield url


def _fill(outbox: Outbox, pki: OutboxPki, base: str) -> list[str]:
    # Retry soon: the receiver answers 503 (Retry-After 5, clamped) for an id in flight.
    retry = fast_retry(max_attempts=200, initial_wait_s=0.2, max_retry_after_s=0.5)
    outbox.add_endpoint(pki.endpoint("billing", f"{base}/hooks", retry=retry))
    return [outbox.enqueue("billing", {"n": n}, event_type="invoice.paid") for n in range(EVENTS)]


def test_kill_9_twice_mid_delivery_loses_nothing_and_handles_nothing_twice(
    durable_url: str, pki: OutboxPki, tmp_path: Path
) -> None:
    hold = tmp_path / "hold"
    with serve_receiver(pki, tmp_path, hold=hold) as (base, log), Outbox(durable_url) as outbox:
        ids = _fill(outbox, pki, base)
        worker_args = ("--concurrency", "8", "--lease-s", "2")
        for kill in range(2):
            hold.touch()  # the receiver holds the next requests open
            worker = start_worker(durable_url, *worker_args)
            try:
                wait_until(
                    lambda: len(read_log(log)["entered"]) > len(read_log(log)["handled"]),
                    "a request held open at the receiver",
                )
                worker.kill()  # mid-delivery: requests in flight, settlements unwritten
            finally:
                worker.close()
                hold.unlink()
            if kill == 0:
                wait_until(lambda: len(read_log(log)["handled"]) >= 1, "the held handlers")
        worker = start_worker(durable_url, *worker_args)
        try:
            wait_until(
                lambda: outbox.status().by_state["done"] == EVENTS, f"{EVENTS} messages done"
            )
            assert worker.terminate() == 0
        finally:
            worker.close()
        seen = read_log(log)
        assert outbox.status().by_state == {"pending": 0, "running": 0, "done": 200, "failed": 0}
    assert sorted(seen["handled"]) == sorted(ids)  # 200 handled, 0 lost, 0 handled twice
    assert max(Counter(seen["handled"]).values()) == 1
    # The kills hit deliveries in flight: those ids were delivered again, and deduped.
    assert len(seen["request"]) > EVENTS


def test_two_worker_processes_never_deliver_one_message_at_once(
    durable_url: str, pki: OutboxPki, tmp_path: Path
) -> None:
    with (
        serve_receiver(pki, tmp_path, handle_s=0.005) as (base, log),
        Outbox(durable_url) as outbox,
    ):
        ids = _fill(outbox, pki, base)
        workers = [start_worker(durable_url, "--concurrency", "8") for _ in range(2)]
        try:
            wait_until(
                lambda: outbox.status().by_state["done"] == EVENTS, f"{EVENTS} messages done"
            )
            assert [w.terminate() for w in workers] == [0, 0]
        finally:
            for w in workers:
                w.close()
        seen = read_log(log)
    assert seen["overlap"] == []
    assert sorted(seen["request"]) == sorted(ids)  # each id was requested exactly once
    summaries = [w.output[-1] for w in workers]
    assert all("stopped: " in line for line in summaries), summaries
