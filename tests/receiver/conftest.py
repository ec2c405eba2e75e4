"""Helpers for the receiver tests: signed requests, simulated TLS scopes, a log collector."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from certs_tool import CA, IssuedCert
from mtls_hooks.core._events import WebhookEvent
from mtls_hooks.core._signing import HmacSecret, Signer

SPIFFE_SENDER = "spiffe://test.example/payments/sender"
JSON_TYPE = "application/json"


@dataclass
class Sender:
    """Signs bodies as a webhook sender would, with overridable headers for failing twins."""

    secret: HmacSecret = field(default_factory=HmacSecret.generate)

    @property
    def key(self) -> str:
        return self.secret.export()

    def request(
        self,
        payload: Any = None,
        *,
        event_type: str = "invoice.paid",
        body: bytes | None = None,
        webhook_id: str | None = None,
        timestamp: int | None = None,
        content_type: str = JSON_TYPE,
        signer: Signer | None = None,
        **extra_headers: str,
    ) -> tuple[bytes, dict[str, str]]:
        """Return ``(body, headers)`` of one signed delivery."""
        if body is None:
            body = json.dumps(payload or {"type": event_type, "data": {"n": 1}}).encode()
        headers = (signer or Signer([self.secret])).sign(
            body,
            webhook_id=webhook_id or Signer.new_webhook_id(),
            timestamp=int(time.time()) if timestamp is None else timestamp,
        )
        return body, {
            **headers.as_dict(),
            "content-type": content_type,
            **{k.replace("_", "-"): v for k, v in extra_headers.items()},
        }


@pytest.fixture(scope="session")
def sender() -> Sender:
    return Sender()


def tls_scope(cert: IssuedCert | None) -> dict[str, Any]:
    """The ``scope_base`` the mtls-hooks server would give a request from ``cert``.

    A seam for Quart's test client (ASGI TLS extension 0.2 shape), not a TLS mock: the
    end-to-end tests prove the real server fills it the same way.
    """
    chain = [cert.cert_pem.bytes().decode()] if cert else []
    return {"extensions": {"tls": {"client_cert_chain": chain}}, "client": ("127.0.0.1", 50000)}


@pytest.fixture(scope="session")
def sender_cert(certs_ca: CA) -> IssuedCert:
    """The allowed sender: an X509-SVID under the payments path."""
    return certs_ca.issue_client("payments", uris=[SPIFFE_SENDER])


@pytest.fixture(scope="session")
def stranger_cert(certs_ca: CA) -> IssuedCert:
    """Same CA, not allowed by the endpoint's identity rules."""
    return certs_ca.issue_client("stranger", uris=["spiffe://test.example/other/svc"])


@dataclass
class Recorder:
    """Handler bodies that record the events they saw."""

    events: list[WebhookEvent] = field(default_factory=list)

    async def async_handler(self, event: WebhookEvent) -> None:
        self.events.append(event)

    def sync_handler(self, event: WebhookEvent) -> dict[str, Any]:
        self.events.append(event)
        return {"handled": event.id}


class LogLines(logging.Handler):
    """Captures the decision records of ``mtls_hooks.receiver`` from any thread."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.records.append(record)
            self._changed.notify_all()

    def wait_for_decision(self, timeout_s: float = 10.0, **fields: Any) -> dict[str, Any]:
        """Block until a decision with these field values is logged; return it.

        Raises:
            AssertionError: none was logged within ``timeout_s``.
        """

        def match() -> dict[str, Any] | None:
            return next(
                (d for d in self.decisions if all(d.get(k) == v for k, v in fields.items())),
                None,
            )

        with self._changed:
            found = self._changed.wait_for(match, timeout_s)
        assert found is not None, f"no decision {fields} within {timeout_s} s"
        return found

    @property
    def decisions(self) -> list[dict[str, Any]]:
        return [r.webhook for r in self.records if hasattr(r, "webhook")]

    def last(self) -> dict[str, Any]:
        assert self.decisions, "no decision was logged"
        return self.decisions[-1]


@pytest.fixture
def log_lines() -> Iterator[LogLines]:
    logger = logging.getLogger("mtls_hooks.receiver")
    handler = LogLines()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
