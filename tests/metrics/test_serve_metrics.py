"""Metrics of a real ``mtls-hooks serve --workers 2``: exact counts summed over the workers."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from certs_tool import CA
from mtls_hooks.core._signing import Signer
from tests.receiver.conftest import Sender
from tests.serving.conftest import Identity, Pki

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Served:
    port: int
    metrics_port: int
    pki: Pki
    pinned: Identity
    stranger: Identity
    sender: Sender
    proc: subprocess.Popen[bytes]

    def request(
        self, method: str, path: str, identity: Identity | None, *, body: bytes = b"",
        headers: dict[str, str] | None = None, timeout_s: float = 10.0,
    ) -> int:  # fmt: skip
        """One request on a new connection (a new handshake); returns the status."""
        context = ssl.create_default_context(cafile=self.pki.ca_file)
        if identity is not None:
            context.load_cert_chain(identity.cert, identity.key)
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=context,
                                           timeout=timeout_s)  # fmt: skip
        try:
            conn.request(method, path, body=body, headers=headers or {})
            return conn.getresponse().status
        finally:
            conn.close()

    def refused_handshake(self, identity: Identity | None) -> None:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            self.request("GET", "/", identity)

    def scrape(self, path: str = "/metrics") -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, text = self.scrape()
        assert status == 200
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, certs_ca: CA) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("metrics-serve")
    pki = Pki.create(directory, certs_ca)
    pinned = pki.identity("metrics-pinned")
    stranger = pki.identity("metrics-stranger")  # same CA, not pinned
    sender = Sender()
    port, metrics_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MTLS_HOOKS_", "PROMETHEUS"))},
        "METRICS_TEST_KEY": sender.key,
        "METRICS_TEST_DEDUPE": str(directory / "dedupe.sqlite"),
    }
    argv = [sys.executable, "-m", "mtls_hooks.cli._main", "serve", "tests.metrics.serve_app:app",
            "--cert", pki.server_cert, "--key", pki.server_key, "--client-ca", pki.ca_file,
            "--pin", pinned.spki_pin, "--bind", f"127.0.0.1:{port}", "--workers", "2",
            "--metrics-bind", f"127.0.0.1:{metrics_port}", "--log-level", "WARNING"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    served = Served(port, metrics_port, pki, pinned, stranger, sender, proc)
    try:
        deadline = time.monotonic() + 60
        while True:  # the sockets are bound before the workers start: wait for a listener
            try:
                socket.create_connection(("127.0.0.1", metrics_port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, "mtls-hooks serve exited during start-up"
                assert time.monotonic() < deadline, "metrics listener not up in 60 s"
                time.sleep(0.05)  # polling a socket that is not bound yet: nothing to wait on
        # One pinned probe (one handshake counted "ok"); it waits in the shared backlog until
        # a worker accepts it, so no retry (which would count twice) is needed.
        assert served.request("GET", "/ready", pinned, timeout_s=60) == 404
        # Worker 0 runs the expiry check when it starts, which may be after worker 1 served
        # the probe: its gauges are the sign that both are up.
        while "mtls_hooks_certificate_expiry_timestamp_seconds{" not in served.scrape()[1]:
            assert time.monotonic() < deadline, "worker 0 never reported its expiry check"
            time.sleep(0.05)  # polling the listener for a state; there is no event to await
        yield served
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def post(served: Served, *, webhook_id: str, bad_signature: bool = False) -> int:
    body, headers = served.sender.request(webhook_id=webhook_id)
    if bad_signature:
        headers["webhook-signature"] = "v1," + "A" * 43 + "="
    return served.request("POST", "/hooks", served.pinned, body=body, headers=headers)


def test_exact_counts_after_a_mix(served: Served) -> None:
    ids = [Signer.new_webhook_id() for _ in range(5)]
    assert [post(served, webhook_id=i) for i in ids] == [204] * 5
    assert post(served, webhook_id=ids[0]) == 204  # a duplicate, answered without the handler
    assert [post(served, webhook_id=Signer.new_webhook_id(), bad_signature=True)
            for _ in range(3)] == [401] * 3  # fmt: skip
    for _ in range(2):
        served.refused_handshake(served.stranger)
    served.refused_handshake(None)

    got = served.samples()

    def value(name: str, **labels: str) -> float:
        return got.get((name, tuple(sorted(labels.items()))), 0.0)

    handshakes = "mtls_hooks_tls_handshakes_total"
    assert value(handshakes, outcome="ok", reason="none") == 1 + 5 + 1 + 3
    assert value(handshakes, outcome="refused", reason="unpinned") == 2
    assert value(handshakes, outcome="refused", reason="no-certificate") == 1
    decisions = "mtls_hooks_webhook_decisions_total"
    assert value(decisions, endpoint="orders", outcome="handled", reason="none") == 5
    assert value(decisions, endpoint="orders", outcome="duplicate", reason="none") == 1
    assert value(decisions, endpoint="orders", outcome="refused", reason="bad-signature") == 3
    duration = "http_server_request_duration_seconds_count"
    assert value(duration, http_request_method="POST", http_response_status_code="204",
                 http_route="orders") == 6  # fmt: skip
    assert value(duration, http_request_method="POST", http_response_status_code="401",
                 http_route="orders") == 3  # fmt: skip
    # The server certificate and the client CA, from the workers' expiry check.
    expiry = [k for k in got if k[0] == "mtls_hooks_certificate_expiry_timestamp_seconds"]
    assert {dict(labels)["role"] for _, labels in expiry} == {"server", "client_ca"}


def test_metrics_listener_exposes_nothing_else(served: Served) -> None:
    assert served.scrape("/")[0] == 404
    assert served.scrape("/hooks")[0] == 404
    status, body = served.scrape("/metrics")
    assert status == 200
    assert "msg_" not in body  # no event ids as label values
    assert "webhook-id" not in body


def test_mtls_port_does_not_serve_metrics(served: Served) -> None:
    # Through mTLS the app answers: Quart's 404, not the exposition.
    assert served.request("GET", "/metrics", served.pinned) == 404
    # And plain HTTP on the mTLS port gets no metrics either.
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as raw:
        raw.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = raw.recv(4096)
    assert b"mtls_hooks_" not in answer
