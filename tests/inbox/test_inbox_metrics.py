"""The inbox worker's metrics, scraped from a real ``mtls-hooks process-inbox --metrics-bind``
after it handled three events, retried one into success and dead-lettered one: the exact
attempt counters by outcome and the inbox's depth gauges by state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtls_hooks import Inbox
from tests.inbox.inbox_app import ENDPOINT
from tests.inbox.processes import RealPki, serve, start_worker, wait_until
from tests.outbox.processes import Samples, scrape

ATTEMPTS = "mtls_hooks_inbox_attempts_total"
DURATION = "mtls_hooks_inbox_handler_duration_seconds_count"
DEPTH = "mtls_hooks_queue_messages"
OLDEST = "mtls_hooks_queue_oldest_due_age_seconds"


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_process_inbox_counts_handled_retried_and_dead_lettered_exactly(
    real_pki: RealPki, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'inbox.sqlite3'}"
    records = tmp_path / "records.log"
    # Two attempts, retried after at most 0.05 s: the dead letter is reached at once.
    retry: dict[str, Any] = {"inbox_max_attempts": 2, "inbox_max_wait_s": 0.05}
    with (
        serve(real_pki, url, records, inbox_concurrency=0, **retry) as node,
        Inbox(url) as inbox,
        real_pki.sender() as sender,
    ):
        for data in ({"n": 0}, {"n": 1}, {"n": 2}, {"fail": 1}, {"fail": -1}):
            result = sender.send(node.url, data, event_type="order.paid")
            assert result.status_code == 202
        observe = ("--metrics-bind", "127.0.0.1:0", "--metrics-interval-s", "0.1")
        child = start_worker(real_pki, url, records, *observe, **retry)
        try:
            port = int(child.wait_for(r"metrics at http://127\.0\.0\.1:(\d+)/metrics").group(1))
            expected = {"pending": 0, "running": 0, "done": 4, "failed": 1}
            wait_until(lambda: inbox.status().by_state == expected, "all settled", timeout_s=30)
            # The depth gauges refresh every 0.1 s: poll the scrape, with a deadline.
            wait_until(
                lambda: value(scrape(port), DEPTH, queue="inbox", state="failed") == 1,
                "the depth gauges to show the settled inbox",
                timeout_s=30,
            )
            got = scrape(port)
            assert child.terminate() == 0
        finally:
            child.close()

    assert value(got, ATTEMPTS, endpoint=ENDPOINT, outcome="handled") == 4
    assert value(got, ATTEMPTS, endpoint=ENDPOINT, outcome="retry") == 2
    assert value(got, ATTEMPTS, endpoint=ENDPOINT, outcome="failed") == 1
    assert sum(v for (name, _), v in got.items() if name == ATTEMPTS) == 7  # 0 unhandled
    assert value(got, DURATION, endpoint=ENDPOINT) == 7  # every run is timed
    for state, count in expected.items():
        assert value(got, DEPTH, queue="inbox", state=state) == count, state
    assert value(got, OLDEST, queue="inbox") == 0
    # Label values are names: no message id.
    assert not {v for _, labels in got for _, v in labels if "msg_" in v}
    assert "stopped: 4 handled, 0 unhandled, 2 retried, 1 failed" in "".join(child.output)
