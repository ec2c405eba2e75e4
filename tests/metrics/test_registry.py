"""The metric set: names and buckets from the conventions, bounded labels, on/off switch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.metrics._registry import (
    Metrics,
    current_metrics,
    disable_metrics,
    enable_metrics,
    status_class,
)


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    disable_metrics()
    yield enable_metrics()
    disable_metrics()


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    value = metrics.registry.get_sample_value(name, labels)
    return None if value is None else float(value)


def test_off_by_default_and_switchable() -> None:
    disable_metrics()
    assert current_metrics() is None
    first = enable_metrics()
    assert enable_metrics() is first  # idempotent: one set per process
    disable_metrics()
    assert current_metrics() is None


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (None, "none"),
        (99, "none"),
        (100, "1xx"),
        (204, "2xx"),
        (301, "3xx"),
        (429, "4xx"),
        (599, "5xx"),
        (600, "none"),
    ],
)
def test_status_class(status: int | None, expected: str) -> None:
    assert status_class(status) == expected


def test_request_duration_follows_opentelemetry(metrics: Metrics) -> None:
    metrics.webhook(
        endpoint="billing", outcome="handled", reason="none", method="POST", status=204,
        seconds=0.02,
    )  # fmt: skip
    labels = {"http_request_method": "POST", "http_response_status_code": "204",
              "http_route": "billing"}  # fmt: skip
    name = "http_server_request_duration_seconds"
    assert sample(metrics, f"{name}_count", **labels) == 1
    assert sample(metrics, f"{name}_bucket", **labels, le="0.01") == 0
    assert sample(metrics, f"{name}_bucket", **labels, le="0.025") == 1
    assert sample(metrics, "mtls_hooks_webhook_decisions_total", endpoint="billing",
                  outcome="handled", reason="none") == 1  # fmt: skip
    # https://opentelemetry.io/docs/specs/semconv/http/http-metrics/: seconds, these bounds.
    bounds = [
        s.labels["le"]
        for family in metrics.registry.collect()
        if family.name == name
        for s in family.samples
        if s.name == f"{name}_bucket"
    ]
    assert bounds == ["0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.25", "0.5", "0.75",
                      "1.0", "2.5", "5.0", "7.5", "10.0", "+Inf"]  # fmt: skip


def test_handshake_attempt_and_delivery_counters(metrics: Metrics) -> None:
    metrics.handshake("ok")
    metrics.handshake("refused", "unpinned")
    metrics.handshake("refused", "unpinned")
    metrics.attempt(endpoint="crm", outcome="retry", status_code=503, seconds=0.1)
    metrics.attempt(endpoint="crm", outcome="delivered", status_code=200, seconds=0.1)
    metrics.delivery(endpoint="crm", outcome="delivered")
    assert sample(metrics, "mtls_hooks_tls_handshakes_total", outcome="ok", reason="none") == 1
    assert sample(metrics, "mtls_hooks_tls_handshakes_total", outcome="refused",
                  reason="unpinned") == 2  # fmt: skip
    assert sample(metrics, "mtls_hooks_delivery_attempts_total", endpoint="crm",
                  outcome="retry", status_class="5xx") == 1  # fmt: skip
    assert sample(metrics, "mtls_hooks_delivery_attempt_duration_seconds_count",
                  endpoint="crm") == 2  # fmt: skip
    assert sample(metrics, "mtls_hooks_deliveries_total", endpoint="crm",
                  outcome="delivered") == 1  # fmt: skip


def test_label_children_are_cached(metrics: Metrics) -> None:
    first = metrics.handshakes.child("refused", "unpinned")
    assert metrics.handshakes.child("refused", "unpinned") is first


def test_exposition_names(metrics: Metrics) -> None:
    metrics.handshake("ok")
    text = generate_latest(metrics.registry).decode()
    assert "# TYPE mtls_hooks_tls_handshakes_total counter" in text
    assert "# TYPE http_server_request_duration_seconds histogram" in text
    assert "# TYPE mtls_hooks_certificate_expiry_timestamp_seconds gauge" in text


def test_multiprocess_dir_must_exist(tmp_path: Path) -> None:
    disable_metrics()
    with pytest.raises(ConfigurationError, match="does not exist"):
        enable_metrics(multiprocess_dir=str(tmp_path / "absent"))


_WORKER = textwrap.dedent(
    """
    import sys
    from mtls_hooks.metrics._registry import enable_metrics
    metrics = enable_metrics(multiprocess_dir=sys.argv[1])
    assert metrics.multiprocess
    for _ in range(int(sys.argv[2])):
        metrics.handshake("refused", "unpinned")
    """
)


def test_multiprocess_mode_sums_processes(tmp_path: Path) -> None:
    from mtls_hooks.metrics._listener import multiprocess_registry

    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    for count in ("3", "4"):
        subprocess.run([sys.executable, "-c", _WORKER, str(tmp_path), count], env=env,
                       check=True, timeout=60)  # fmt: skip
    registry = multiprocess_registry(str(tmp_path))
    value = registry.get_sample_value(
        "mtls_hooks_tls_handshakes_total", {"outcome": "refused", "reason": "unpinned"}
    )
    assert value == 7


def test_multiprocess_refused_after_memory_import(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import sys
        import prometheus_client  # memory mode chosen here
        from mtls_hooks.core._errors import ConfigurationError
        from mtls_hooks.metrics._registry import enable_metrics
        try:
            enable_metrics(multiprocess_dir=sys.argv[1])
        except ConfigurationError as exc:
            print(exc)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, check=True,
                         capture_output=True, text=True, timeout=60).stdout  # fmt: skip
    assert "set PROMETHEUS_MULTIPROC_DIR before the process starts" in out
