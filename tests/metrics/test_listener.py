"""The metrics listener: /metrics only, its own address, plain HTTP, stops cleanly."""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator

import pytest

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.metrics._listener import MetricsListener
from mtls_hooks.metrics._registry import Metrics, disable_metrics, enable_metrics
from tests.peers import missing


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    disable_metrics()
    yield enable_metrics()
    disable_metrics()


@pytest.fixture
def listener(metrics: Metrics) -> Iterator[MetricsListener]:
    running = MetricsListener("127.0.0.1", 0, metrics.registry).start()
    yield running
    running.stop()


def fetch(listener: MetricsListener, path: str, method: str = "GET") -> tuple[int, str]:
    conn = http.client.HTTPConnection(listener.host, listener.port, timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_metrics_path_serves_the_registry(listener: MetricsListener, metrics: Metrics) -> None:
    metrics.handshake("refused", "no-certificate")
    status, body = fetch(listener, "/metrics")
    assert status == 200
    assert 'mtls_hooks_tls_handshakes_total{outcome="refused",reason="no-certificate"} 1.0' in body


@pytest.mark.parametrize("path", ["/", "/webhooks", "/metrics/extra", "/favicon.ico"])
def test_other_paths_are_404(listener: MetricsListener, path: str) -> None:
    status, body = fetch(listener, path)
    assert status == 404
    assert "mtls_hooks" not in body


def test_only_get(listener: MetricsListener) -> None:
    status, _ = fetch(listener, "/metrics", method="POST")
    assert status == 405


def test_busy_address_is_a_configuration_error(metrics: Metrics) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError, match=f"cannot bind metrics_bind 127.0.0.1:{port}"):
            MetricsListener("127.0.0.1", port, metrics.registry)


def test_ipv6_loopback(metrics: Metrics) -> None:
    if not socket.has_ipv6:
        missing("IPv6 loopback")
    running = MetricsListener("::1", 0, metrics.registry).start()
    try:
        status, _ = fetch(running, "/metrics")
        assert status == 200
    finally:
        running.stop()


def test_stop_closes_the_socket(metrics: Metrics) -> None:
    running = MetricsListener("127.0.0.1", 0, metrics.registry).start()
    port = running.port
    running.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
