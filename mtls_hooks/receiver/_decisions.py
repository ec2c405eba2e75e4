"""The decision line: one log line per webhook request, and the problem answer of a refusal.

The line is logfmt on the ``mtls_hooks.receiver`` logger (``webhook outcome=refused
status=401 endpoint=billing ...``), with the same fields on the record as ``record.webhook``
for JSON formatters. Values an attacker chose (an unverified event id, a subject) are
quoted so that they cannot forge a field or a line.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, NamedTuple, cast

from mtls_hooks.core._identity import PeerIdentity
from mtls_hooks.metrics._registry import current_metrics
from mtls_hooks.receiver._responses import problem_response

if TYPE_CHECKING:
    from quart import Response

__all__ = ["DecisionLog", "Refusal", "logger"]

logger = logging.getLogger("mtls_hooks.receiver")


class Refusal(NamedTuple):
    """Why a request is refused; rendered as an RFC 9457 problem by :class:`DecisionLog`."""

    status: int
    reason: str
    detail: str
    headers: Mapping[str, str] | None = None


# RFC 9110 §9 methods: the OpenTelemetry convention labels any other one "_OTHER".
_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
_SAFE_LOG_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:/+=@"
)


def _logfmt(value: object) -> str:
    """Render one logfmt value; quote anything that could forge a field or a line."""
    if value is None:
        return "-"
    text = str(value)[:256]
    if text and all(c in _SAFE_LOG_CHARS for c in text):
        return text
    return json.dumps(text)


class _LogLine:
    """The logfmt text of a decision, rendered only if a handler formats the record."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        return "webhook " + " ".join(f"{k}={_logfmt(v)}" for k, v in self.fields.items())


class DecisionLog:
    """What is known about one request, written as its single decision line.

    The line is logfmt (``webhook outcome=refused status=401 endpoint=billing ...``) and the
    same fields ride on the record as ``record.webhook`` (a dict) for JSON formatters.
    Refusals log at WARNING, acknowledgements at INFO, handler failures at ERROR with the
    traceback (which never reaches the response).
    """

    __slots__ = ("endpoint", "event_id", "event_type", "method", "peer", "started")

    def __init__(
        self, endpoint: str, peer: PeerIdentity | None, started: float, method: str = "POST"
    ) -> None:
        self.endpoint = endpoint
        self.peer = peer
        self.started = started
        self.method = method
        self.event_id: str | None = None
        self.event_type: str | None = None

    def refused(self, refusal: Refusal, *, level: int = logging.WARNING) -> Response:
        """Render ``refusal`` as a problem response, log it, and return it."""
        response = cast(
            "Response",
            problem_response(refusal.status, detail=refusal.detail, reason=refusal.reason),
        )
        if refusal.headers:
            response.headers.update(refusal.headers)
        self._write(level, "refused", response.status_code, refusal.reason)
        return response

    def done(self, response: Response, outcome: str) -> Response:
        """Log an acknowledgement or a handler's own answer, and return it."""
        self._write(logging.INFO, outcome, response.status_code, None)
        return response

    def failed(self, exc: Exception, *, internal: bool = False) -> Response:
        """Log a handler exception (or, ``internal``, one of the receiver's own) with its
        traceback; answer a 500 without one."""
        if internal:
            outcome = "internal-error"
            detail = f"the receiver failed on webhook {self.event_id or '(not verified)'}"
        else:
            outcome = "handler-error"
            detail = f"the handler of webhook {self.event_id} failed"
        response = cast(
            "Response",
            problem_response(
                500,
                detail=f"{detail}; it was not acknowledged and may be retried",
                reason=outcome,
            ),
        )
        self._write(logging.ERROR, outcome, 500, type(exc).__name__, exc)
        return response

    def _write(
        self,
        level: int,
        outcome: str,
        status: int,
        reason: str | None,
        exc: Exception | None = None,
    ) -> None:
        metrics = current_metrics()
        if metrics is not None:
            # Label values from fixed vocabularies: a refusal's reason code, an exception
            # counted as "exception" (its class name stays in the log line), the endpoint's
            # configured name; never the event id or the peer's subject.
            metrics.webhook(
                endpoint=self.endpoint,
                outcome=outcome,
                reason=(reason or "none") if exc is None else "exception",
                method=self.method if self.method in _METHODS else "_OTHER",
                status=status,
                seconds=time.perf_counter() - self.started,
            )
        if not logger.isEnabledFor(level):
            return
        latency_ms = (time.perf_counter() - self.started) * 1000.0
        peer = self.peer
        fields = {
            "outcome": outcome,
            "status": status,
            "endpoint": self.endpoint,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "peer_pin": peer.spki_pin if peer else None,
            "peer_subject": peer.subject if peer else None,
            "reason": reason,
            "latency_ms": round(latency_ms, 3),
        }
        logger.log(level, "%s", _LogLine(fields), exc_info=exc, extra={"webhook": fields})
