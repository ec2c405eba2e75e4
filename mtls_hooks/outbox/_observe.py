"""What a delivery worker tells operators: counters per attempt and delivery, queue depth,
and the expiry of the client certificates it loads.

Recording happens only while metrics are on (:func:`~mtls_hooks.metrics.current_metrics`
is not ``None``): with metrics off an attempt costs one ``None`` check. Label values are
bounded: endpoint names from the records (enqueue refuses unknown ones), outcomes from a
fixed vocabulary, status classes; never a URL, a message id or a subject from a peer.

* ``mtls_hooks_delivery_attempts_total{endpoint, outcome, status_class}``: ``outcome`` is
  ``delivered`` (a 2xx), ``retry`` (failed, another attempt is scheduled), ``failed``
  (failed, dead-lettered: attempts or deadline exhausted, or a permanent failure such as a
  refused certificate) or ``gone`` (a 410: dead-lettered at once).
* ``mtls_hooks_deliveries_total{endpoint, outcome}``: each message once, when it ends:
  ``delivered``, ``failed`` (the dead letter) or ``gone``.
* ``mtls_hooks_delivery_attempt_duration_seconds{endpoint}``: attempts that sent a request.
* ``mtls_hooks_queue_messages{queue="outbox", state}`` and
  ``mtls_hooks_queue_oldest_due_age_seconds{queue="outbox"}``: refreshed by the worker
  loop every ``metrics_interval_s`` (``mtls_hooks.queue._observe``).
* ``mtls_hooks_certificate_expiry_timestamp_seconds{role="sender_client", name=CN}``: set
  when an endpoint's client certificate is loaded (or reloaded after a renewal) and at each
  daily expiry check, which also logs a warning or an error when the date is close.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Final

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.metrics._expiry import DAY_S, Expiry, ExpiryAlarm, certificate_expiries
from mtls_hooks.metrics._registry import Metrics
from mtls_hooks.outbox._endpoint import Endpoint

__all__ = [
    "SENDER_ROLE",
    "SenderCertificates",
    "record_attempt",
]

_LOG = logging.getLogger("mtls_hooks.outbox")
SENDER_ROLE: Final = "sender_client"


def record_attempt(
    metrics: Metrics,
    endpoint: str,
    outcome: str,
    *,
    status_code: int | None = None,
    seconds: float | None = None,
    finished: str | None = None,
) -> None:
    """Count one attempt (and its duration, if it sent a request) and, when ``finished``
    names how the message ended, one delivery."""
    if seconds is None:  # nothing was sent (an unusable record or file): no duration
        metrics.delivery_attempts.child(endpoint, outcome, "none").inc()
    else:
        metrics.attempt(
            endpoint=endpoint, outcome=outcome, status_code=status_code, seconds=seconds
        )
    if finished is not None:
        metrics.delivery(endpoint=endpoint, outcome=finished)


class SenderCertificates:
    """The client certificates a worker has loaded, watched for expiry.

    :meth:`loaded` is called whenever an endpoint's sender is built (first use, renewal):
    that certificate is checked at once, unless the same file, unchanged, was already.
    :attr:`alarm` checks all of them; the worker runs it daily.

    Args:
        warn_within_s: log a WARNING when a certificate expires this soon.
        error_within_s: log an ERROR when it expires this soon, or has expired.
        clock: epoch seconds.

    Raises:
        ConfigurationError: the windows are negative or the error window is the larger.
    """

    def __init__(
        self,
        *,
        warn_within_s: float = 30 * DAY_S,
        error_within_s: float = 7 * DAY_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._paths: dict[str, str] = {}  # endpoint name -> certificate file
        self._checked: dict[str, tuple[int, int, int]] = {}  # file -> stamp when checked
        self._windows = {"warn_within_s": warn_within_s, "error_within_s": error_within_s}
        self._clock = clock
        self.alarm = ExpiryAlarm(self._expiries, clock=clock, **self._windows)

    def loaded(self, endpoint: Endpoint) -> None:
        """Note (and check now) the certificate a new sender for ``endpoint`` presents."""
        if endpoint.cert_file is None:
            self._paths.pop(endpoint.name, None)
            return
        self._paths[endpoint.name] = path = endpoint.cert_file
        try:
            stat = os.stat(path)
        except OSError:
            return  # the sender's build has just reported it
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if self._checked.get(path) == stamp:
            return  # another endpoint presents the same file: one line per certificate
        self._checked[path] = stamp
        try:
            ExpiryAlarm(lambda: self._read(path), clock=self._clock, **self._windows).check()
        except ConfigurationError as exc:  # the sender's own build reports unreadable files
            _LOG.warning("event=expiry_check_failed endpoint=%s detail=%s", endpoint.name, exc)

    @staticmethod
    def _read(path: str) -> list[Expiry]:
        return certificate_expiries(SENDER_ROLE, path, leaf_only=True)

    def _expiries(self) -> list[Expiry]:
        found: list[Expiry] = []
        for path in sorted(set(self._paths.values())):
            try:
                found += self._read(path)
            except ConfigurationError as exc:  # one unreadable file hides no other
                _LOG.warning("event=expiry_check_failed detail=%s", exc)
        return found
