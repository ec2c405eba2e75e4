"""The metrics mtls-hooks records: one process-wide set, created when metrics are enabled.

Nothing is recorded until :func:`enable_metrics` runs (``metrics_bind`` in the server
config, ``--metrics-bind`` on the delivery worker, or an application's own call): the hot
paths ask :func:`current_metrics` and skip the work on ``None``.

prometheus_client chooses its value store when it is first imported, in memory or mmap files
under ``PROMETHEUS_MULTIPROC_DIR`` (its multiprocess mode, needed with ``--workers N``:
https://prometheus.github.io/client_python/multiprocess/). So it is imported here lazily,
after the supervisor has set that variable for the workers it spawns.

Names follow Envoy's TLS counters for handshakes (``ssl.handshake``,
``ssl.fail_verify_*``) and the OpenTelemetry HTTP semantic conventions for request duration
(``http.server.request.duration``, seconds, the spec's explicit bucket boundaries). Every
label value is bounded: reasons and outcomes from fixed vocabularies, endpoint names from
configuration; never a webhook id, a URL with credentials or an unverified subject.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Final

from mtls_hooks.core._errors import ConfigurationError

__all__ = [
    "MULTIPROC_ENV",
    "REQUEST_DURATION_BUCKETS_S",
    "Metrics",
    "current_metrics",
    "disable_metrics",
    "enable_metrics",
    "status_class",
]

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
# https://opentelemetry.io/docs/specs/semconv/http/http-metrics/#metric-httpserverrequestduration
REQUEST_DURATION_BUCKETS_S: Final = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip


def status_class(status_code: int | None) -> str:
    """Return ``"2xx"`` … ``"5xx"`` for a status, ``"none"`` when no answer came."""
    if status_code is None or not 100 <= status_code <= 599:
        return "none"
    return f"{status_code // 100}xx"


class _Family:
    """One labelled metric with its children cached per label tuple.

    ``metric.labels(...)`` validates and stringifies every value under a lock on each call
    (~1.5 µs); the cache makes a repeated label set one dict lookup on the hot path.
    """

    __slots__ = ("_children", "_lock", "metric")

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()

    def child(self, *values: str) -> Any:
        found = self._children.get(values)
        if found is None:
            with self._lock:
                found = self._children.setdefault(values, self.metric.labels(*values))
        return found


class Metrics:
    """Every metric mtls-hooks records, registered in one registry.

    Attributes:
        registry: the ``CollectorRegistry`` holding them (in multiprocess mode, values live
            in the shared directory and a ``MultiProcessCollector`` reads them instead).
        multiprocess: whether values are written to ``PROMETHEUS_MULTIPROC_DIR``.
    """

    def __init__(self, registry: Any = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

        self.multiprocess = values.ValueClass.__name__ == "MmapedValue"
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.handshakes = _Family(
            Counter(
                "mtls_hooks_tls_handshakes",
                "TLS handshakes by outcome (ok, refused) and refusal reason (as logged).",
                ["outcome", "reason"],
                registry=reg,
            )
        )
        self.webhook_decisions = _Family(
            Counter(
                "mtls_hooks_webhook_decisions",
                "Webhook requests by endpoint, outcome and refusal reason.",
                ["endpoint", "outcome", "reason"],
                registry=reg,
            )
        )
        self.request_duration = _Family(
            Histogram(
                "http_server_request_duration_seconds",
                "Duration of webhook requests (OpenTelemetry http.server.request.duration).",
                ["http_request_method", "http_response_status_code", "http_route"],
                buckets=REQUEST_DURATION_BUCKETS_S,
                registry=reg,
            )
        )
        self.deliveries = _Family(
            Counter(
                "mtls_hooks_deliveries",
                "Finished deliveries by endpoint and outcome (delivered, failed, gone, ...).",
                ["endpoint", "outcome"],
                registry=reg,
            )
        )
        self.delivery_attempts = _Family(
            Counter(
                "mtls_hooks_delivery_attempts",
                "Delivery attempts by endpoint, outcome and answer status class.",
                ["endpoint", "outcome", "status_class"],
                registry=reg,
            )
        )
        self.attempt_duration = _Family(
            Histogram(
                "mtls_hooks_delivery_attempt_duration_seconds",
                "Duration of one delivery attempt, connection included.",
                ["endpoint"],
                buckets=REQUEST_DURATION_BUCKETS_S,
                registry=reg,
            )
        )
        self.inbox_attempts = _Family(
            Counter(
                "mtls_hooks_inbox_attempts",
                "Handler runs from the inbox by endpoint and outcome "
                "(handled, unhandled, retry, failed).",
                ["endpoint", "outcome"],
                registry=reg,
            )
        )
        self.inbox_handler_duration = _Family(
            Histogram(
                "mtls_hooks_inbox_handler_duration_seconds",
                "Duration of one handler run from the inbox.",
                ["endpoint"],
                buckets=REQUEST_DURATION_BUCKETS_S,
                registry=reg,
            )
        )
        # Gauges: in multiprocess mode each process writes its own value; the most recent
        # one of a live process is the truth (a reload or a newer depth reading wins).
        self.queue_messages = _Family(
            Gauge(
                "mtls_hooks_queue_messages",
                "Messages in the outbox or inbox by state.",
                ["queue", "state"],
                multiprocess_mode="livemostrecent",
                registry=reg,
            )
        )
        self.queue_oldest_due_age = _Family(
            Gauge(
                "mtls_hooks_queue_oldest_due_age_seconds",
                "Age of the oldest message that is due and not yet delivered.",
                ["queue"],
                multiprocess_mode="livemostrecent",
                registry=reg,
            )
        )
        self.certificate_expiry = _Family(
            Gauge(
                "mtls_hooks_certificate_expiry_timestamp_seconds",
                "notAfter of each configured certificate, as a Unix timestamp.",
                ["role", "name"],
                multiprocess_mode="livemostrecent",
                registry=reg,
            )
        )
        self.crl_next_update = _Family(
            Gauge(
                "mtls_hooks_crl_next_update_timestamp_seconds",
                "nextUpdate of each configured CRL, as a Unix timestamp.",
                ["issuer"],
                multiprocess_mode="livemostrecent",
                registry=reg,
            )
        )

    # --- recording helpers: one call per event, so call sites stay one line --------------

    def handshake(self, outcome: str, reason: str = "none") -> None:
        """Count one handshake (``ok`` or ``refused`` with its logged reason)."""
        self.handshakes.child(outcome, reason).inc()

    def webhook(
        self, *, endpoint: str, outcome: str, reason: str, method: str, status: int, seconds: float
    ) -> None:
        """Count one webhook decision and observe its duration."""
        self.webhook_decisions.child(endpoint, outcome, reason).inc()
        self.request_duration.child(method, str(status), endpoint).observe(seconds)

    def attempt(
        self, *, endpoint: str, outcome: str, status_code: int | None, seconds: float
    ) -> None:
        """Count one delivery attempt and observe its duration."""
        self.delivery_attempts.child(endpoint, outcome, status_class(status_code)).inc()
        self.attempt_duration.child(endpoint).observe(seconds)

    def inbox_attempt(self, *, endpoint: str, outcome: str, seconds: float | None) -> None:
        """Count one handler run from the inbox and observe its duration (if it ran)."""
        self.inbox_attempts.child(endpoint, outcome).inc()
        if seconds is not None:
            self.inbox_handler_duration.child(endpoint).observe(seconds)

    def delivery(self, *, endpoint: str, outcome: str) -> None:
        """Count one finished delivery."""
        self.deliveries.child(endpoint, outcome).inc()


class _Process:
    """The process-wide switch: ``metrics`` is ``None`` while recording is off."""

    metrics: Metrics | None = None
    lock = threading.Lock()


def current_metrics() -> Metrics | None:
    """Return the process's metrics, or ``None`` while metrics are off (nothing recorded)."""
    return _Process.metrics


def enable_metrics(*, multiprocess_dir: str | None = None) -> Metrics:
    """Turn recording on in this process and return the metrics (idempotent).

    Args:
        multiprocess_dir: write values to this directory (prometheus_client's multiprocess
            mode) so that a supervisor can sum several worker processes. Must be set before
            prometheus_client is first imported in this process.

    Raises:
        ConfigurationError: ``multiprocess_dir`` asked for after prometheus_client was
            already imported in memory mode, or it is not a directory.
    """
    with _Process.lock:
        if _Process.metrics is not None:
            return _Process.metrics
        if multiprocess_dir is not None:
            if not os.path.isdir(multiprocess_dir):
                raise ConfigurationError(f"metrics directory {multiprocess_dir} does not exist")
            os.environ[MULTIPROC_ENV] = multiprocess_dir
        metrics = Metrics()
        if multiprocess_dir is not None and not metrics.multiprocess:
            raise ConfigurationError(
                "prometheus_client was imported before multiprocess metrics were configured; "
                f"set {MULTIPROC_ENV} before the process starts"
            )
        _Process.metrics = metrics
        return metrics


def disable_metrics() -> None:
    """Turn recording off again (tests and benchmarks compare both)."""
    with _Process.lock:
        _Process.metrics = None
