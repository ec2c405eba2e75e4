"""Metrics and expiry alarms of the delivery worker.

The main test scrapes a real ``mtls-hooks deliver --metrics-bind`` process delivering over
real mTLS to a receiver that answers 2xx, 503-then-2xx and always 500, and asserts the exact
counters and gauges. The others run a :class:`DeliveryWorker` in this process for the rarer
outcomes and the expiry windows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import logging
import re
import socket
import subprocess
from collections.abc import Iterator, MutableMapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from certs_tool import CA
from mtls_hooks.metrics._expiry import DAY_S
from mtls_hooks.metrics._registry import Metrics, current_metrics, disable_metrics, enable_metrics
from mtls_hooks.outbox import DeliveryWorker, Outbox
from mtls_hooks.outbox._observe import SenderCertificates
from mtls_hooks.testing import running_server
from tests.outbox.conftest import OutboxPki, fast_retry
from tests.outbox.processes import CLI, REPO, Child, Samples, scrape, start_worker, wait_until
from tests.outbox.receiver_app import build_app

Scope = MutableMapping[str, Any]


class FirstTry503:
    """ASGI: the first request of each webhook-id to ``/flaky`` gets a 503; later ones go
    on to the real receiver at ``/hooks`` (a receiver that is briefly overloaded)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: set[bytes] = set()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/flaky":
            webhook_id = dict(scope["headers"]).get(b"webhook-id", b"")
            if webhook_id not in self.seen:
                self.seen.add(webhook_id)
                await send({"type": "http.response.start", "status": 503,
                            "headers": [(b"content-length", b"0")]})  # fmt: skip
                await send({"type": "http.response.body", "body": b""})
                return
            scope = {**scope, "path": "/hooks", "raw_path": b"/hooks"}
        await self.app(scope, receive, send)


@pytest.fixture
def base_url(pki: OutboxPki, tmp_path: Path) -> Iterator[str]:
    app = FirstTry503(build_app(pki.secret, tmp_path / "receiver.log"))
    with running_server(app, pki.server_config()) as server:
        yield f"https://localhost:{server.port}"


def scrape_status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def registry_samples(metrics: Metrics) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in metrics.registry.collect()
        for s in family.samples
    }


def client_not_after_s(pki: OutboxPki) -> float:
    cert = x509.load_pem_x509_certificate(Path(pki.path("client.pem")).read_bytes())
    return cert.not_valid_after_utc.timestamp()


ATTEMPTS = "mtls_hooks_delivery_attempts_total"
DELIVERIES = "mtls_hooks_deliveries_total"
DURATION = "mtls_hooks_delivery_attempt_duration_seconds_count"
DEPTH = "mtls_hooks_queue_messages"
OLDEST = "mtls_hooks_queue_oldest_due_age_seconds"
EXPIRY = "mtls_hooks_certificate_expiry_timestamp_seconds"


def test_a_real_deliver_process_counts_exactly(
    pki: OutboxPki, base_url: str, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'outbox.sqlite3'}?synchronous=normal"
    with Outbox(store) as outbox:
        outbox.add_endpoint(pki.endpoint("ok", f"{base_url}/hooks", retry=fast_retry()))
        outbox.add_endpoint(pki.endpoint("flaky", f"{base_url}/flaky", retry=fast_retry()))
        outbox.add_endpoint(
            pki.endpoint("broken", f"{base_url}/broken", retry=fast_retry(max_attempts=2))
        )
        for n in range(3):
            outbox.enqueue("ok", {"n": n}, event_type="test.ok")
        for n in range(2):
            outbox.enqueue("flaky", {"n": n}, event_type="test.flaky")
        outbox.enqueue("broken", {"n": 0}, event_type="test.broken")

        # A warning window wider than the test certificate's life: the alarm must say so.
        observe = ["--metrics-bind", "127.0.0.1:0", "--metrics-interval-s", "0.1"]
        child = start_worker(store, *observe, "--expiry-warn-days", "36500",
                             "--expiry-error-days", "0")  # fmt: skip
        try:
            port = int(child.wait_for(r"metrics at http://127\.0\.0\.1:(\d+)/metrics").group(1))

            def settled() -> bool:
                states = outbox.status().by_state
                return states["pending"] == states["running"] == 0

            wait_until(settled, "every message delivered or dead-lettered", timeout_s=60)
            assert outbox.status().by_state == {"pending": 0, "running": 0, "done": 5, "failed": 1}
            # The depth gauges are refreshed every 0.1 s: poll them, with a deadline.
            wait_until(
                lambda: value(scrape(port), DEPTH, queue="outbox", state="done") == 5,
                "the depth gauge to show the settled queue",
                timeout_s=30,
            )
            got = scrape(port)
            assert scrape_status(port, "/") == 404  # the listener serves metrics only
            assert child.terminate() == 0
        finally:
            child.close()

    assert value(got, ATTEMPTS, endpoint="ok", outcome="delivered", status_class="2xx") == 3
    assert value(got, ATTEMPTS, endpoint="flaky", outcome="retry", status_class="5xx") == 2
    assert value(got, ATTEMPTS, endpoint="flaky", outcome="delivered", status_class="2xx") == 2
    assert value(got, ATTEMPTS, endpoint="broken", outcome="retry", status_class="5xx") == 1
    assert value(got, ATTEMPTS, endpoint="broken", outcome="failed", status_class="5xx") == 1
    assert sum(v for (name, _), v in got.items() if name == ATTEMPTS) == 3 + 2 + 2 + 1 + 1
    assert value(got, DELIVERIES, endpoint="ok", outcome="delivered") == 3
    assert value(got, DELIVERIES, endpoint="flaky", outcome="delivered") == 2
    assert value(got, DELIVERIES, endpoint="broken", outcome="failed") == 1
    assert sum(v for (name, _), v in got.items() if name == DELIVERIES) == 6
    assert value(got, DURATION, endpoint="ok") == 3
    assert value(got, DURATION, endpoint="flaky") == 4
    assert value(got, DURATION, endpoint="broken") == 2
    assert value(got, DEPTH, queue="outbox", state="failed") == 1
    assert value(got, DEPTH, queue="outbox", state="done") == 5
    assert value(got, DEPTH, queue="outbox", state="pending") == 0
    assert value(got, DEPTH, queue="outbox", state="running") == 0
    assert value(got, OLDEST, queue="outbox") == 0
    # The client certificate every endpoint presents, by its subject CN, as a timestamp.
    expiries = {labels: v for (name, labels), v in got.items() if name == EXPIRY}
    assert expiries == {
        (("name", "outbox-sender"), ("role", "sender_client")): client_not_after_s(pki)
    }
    # Label values are names from the records: no URL, port or message id.
    assert not {v for _, labels in got for _, v in labels if "localhost" in v or "msg_" in v}
    output = "".join(child.output)
    # One warning for the one certificate file three endpoints share, none at ERROR.
    warnings = re.findall(r"WARNING mtls_hooks.expiry event=certificate_expiring "
                          r'role=sender_client name="outbox-sender"', output)  # fmt: skip
    assert len(warnings) == 1, output
    assert "ERROR" not in output


def test_without_metrics_bind_no_listener_and_no_alarm(
    pki: OutboxPki, base_url: str, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'outbox.sqlite3'}?synchronous=normal"
    with Outbox(store) as outbox:
        outbox.add_endpoint(pki.endpoint("ok", f"{base_url}/hooks", retry=fast_retry()))
        outbox.enqueue("ok", {"n": 0}, event_type="test.ok")
        child: Child = start_worker(store)  # default windows: 30 and 7 days
        try:
            wait_until(lambda: outbox.status().by_state["done"] == 1, "the delivery", timeout_s=60)
            assert child.terminate() == 0
        finally:
            child.close()
    output = "".join(child.output)
    assert "metrics at" not in output
    assert "metrics_listening" not in output
    assert "certificate_expiring" not in output  # the test certificate has months left


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    assert current_metrics() is None, "metrics left on by another test"
    try:
        yield enable_metrics()
    finally:
        disable_metrics()


def run_worker(store: Any, **options: Any) -> None:
    async def main() -> None:
        await DeliveryWorker(store, poll_interval_s=0.05, **options).run(until_idle=True)

    asyncio.run(main())


def test_gone_and_unusable_records_in_process(
    pki: OutboxPki, base_url: str, metrics: Metrics
) -> None:
    with Outbox("memory://") as outbox:
        outbox.add_endpoint(pki.endpoint("gone", f"{base_url}/gone", retry=fast_retry()))
        outbox.enqueue("gone", {"n": 0}, event_type="test.gone")
        outbox.add_endpoint(pki.endpoint("lost", f"{base_url}/hooks", retry=fast_retry()))
        outbox.enqueue("lost", {"n": 0}, event_type="test.lost")
        # A record this worker cannot use (written by a newer version, or by hand).
        outbox.store.put_target("lost", {"url": 42})
        run_worker(outbox.store)
        assert outbox.status().by_state["failed"] == 2
    got = registry_samples(metrics)
    assert value(got, ATTEMPTS, endpoint="gone", outcome="gone", status_class="4xx") == 1
    assert value(got, DELIVERIES, endpoint="gone", outcome="gone") == 1
    assert value(got, DURATION, endpoint="gone") == 1
    # Nothing was sent to "lost": an attempt counted, no duration observed.
    assert value(got, ATTEMPTS, endpoint="lost", outcome="failed", status_class="none") == 1
    assert value(got, DELIVERIES, endpoint="lost", outcome="failed") == 1
    assert value(got, DURATION, endpoint="lost") == 0


def test_metrics_off_records_nothing(pki: OutboxPki, base_url: str) -> None:
    assert current_metrics() is None
    with Outbox("memory://") as outbox:
        outbox.add_endpoint(pki.endpoint("ok", f"{base_url}/hooks", retry=fast_retry()))
        outbox.enqueue("ok", {"n": 0}, event_type="test.ok")
        run_worker(outbox.store)
        assert outbox.status().by_state["done"] == 1
    # Turned on afterwards, the fresh registry holds no trace of that delivery.
    late = enable_metrics()
    try:
        assert value(registry_samples(late), DELIVERIES, endpoint="ok", outcome="delivered") == 0
    finally:
        disable_metrics()


class Clock:
    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def expiring_cert(tmp_path: Path, days: float, name: str = "soon-client") -> tuple[str, float]:
    ca = CA(name="expiry test CA")
    now = dt.datetime.now(dt.UTC)
    client = ca.issue_client(common_name=name, not_after=now + dt.timedelta(days=days))
    path = tmp_path / f"{name}.pem"
    client.chain_pem.write_to_path(path)
    return str(path), client.certificate.not_valid_after_utc.timestamp()


@pytest.mark.parametrize(
    ("days_left", "level"),
    [(40.0, None), (20.0, logging.WARNING), (5.0, logging.ERROR), (-1.0, logging.ERROR)],
)
def test_expiry_windows(
    pki: OutboxPki, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    days_left: float, level: int | None,
) -> None:  # fmt: skip
    path, not_after_s = expiring_cert(tmp_path, 60.0)
    clock = Clock(not_after_s - days_left * DAY_S)
    watched = SenderCertificates(warn_within_s=30 * DAY_S, error_within_s=7 * DAY_S, clock=clock)
    endpoint = replace(pki.endpoint("soon", "https://localhost:9/hooks"), cert_file=path)
    with caplog.at_level(logging.INFO, logger="mtls_hooks.expiry"):
        watched.loaded(endpoint)
        watched.loaded(endpoint)  # the same file again: checked once
        lines = [r for r in caplog.records if r.name == "mtls_hooks.expiry"]
        if level is None:
            assert lines == []
        else:
            assert [r.levelno for r in lines] == [level]
            assert 'role=sender_client name="soon-client"' in lines[0].getMessage()
        # The daily check looks at every loaded certificate again.
        assert len(watched.alarm.check()) == (0 if level is None else 1)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--expiry-warn-days", "5", "--expiry-error-days", "7"], "expiry alarms need"),
        (["--expiry-warn-days", "-1"], "expiry_warn_days"),
        (["--metrics-bind", "9464"], "must be 'host:port'"),
        (["--metrics-interval-s", "0"], "metrics_interval_s"),
    ],
)
def test_bad_observability_flags_are_one_line(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    store = f"sqlite:///{tmp_path / 'outbox.sqlite3'}"
    done = subprocess.run([CLI, "deliver", "--store", store, *flags], capture_output=True,
                          text=True, cwd=REPO, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert message in done.stderr


def test_a_metrics_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        store = f"sqlite:///{tmp_path / 'outbox.sqlite3'}"
        argv = [CLI, "deliver", "--store", store, "--metrics-bind", f"127.0.0.1:{port}"]
        done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=60,
                              check=False)  # fmt: skip
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert f"cannot bind metrics_bind 127.0.0.1:{port}" in done.stderr
