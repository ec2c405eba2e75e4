"""The exception hierarchy of mtls-hooks.

Every error the library raises on purpose derives from :class:`MtlsHooksError`.
Foreign exceptions (``ssl``, ``httpx``, ``aiohttp``, ``tenacity``, ``cryptography``)
are translated at exactly one boundary per component, always with ``raise ... from exc``.

::

    MtlsHooksError
    ├── ConfigurationError          bad or unknown settings, unreadable or mismatched files
    ├── VerificationError           .reason: a short machine-readable code
    │   ├── SignatureError          missing, malformed or wrong webhook signature (401)
    │   ├── TimestampError          webhook-timestamp outside the tolerance (401)
    │   ├── ReplayError             webhook-id already processed (dedupe)
    │   ├── IdentityError           peer identity not allowed on this route (403)
    │   └── PinError                certificate not matching the pins; also an ssl.SSLError,
    │                               so raising it inside a handshake fails the handshake
    └── DeliveryError               .result: the DeliveryResult with every attempt
        ├── TransportError          connect, reset, timeout: retried
        │   └── TLSError            certificate not trusted or pin mismatch: never retried
        ├── StatusError             .status_code; a non-2xx answer
        │   └── EndpointGoneError   410: the receiver asks us to stop
        └── RetriesExhaustedError   the stop policy (attempts or deadline) ended the retries
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any, Protocol

__all__ = [
    "ConfigurationError",
    "DeliveryError",
    "EndpointGoneError",
    "IdentityError",
    "MtlsHooksError",
    "PinError",
    "ReplayError",
    "RetriesExhaustedError",
    "SignatureError",
    "StatusError",
    "TLSError",
    "TimestampError",
    "TransportError",
    "VerificationError",
]


class MtlsHooksError(Exception):
    """Root of every error raised by mtls-hooks."""


class ConfigurationError(MtlsHooksError):
    """Settings that cannot be used: unknown keys, unreadable files, mismatched keys."""


class VerificationError(MtlsHooksError):
    """An inbound request or peer failed verification.

    Attributes:
        reason: a short, stable code such as ``"stale-timestamp"`` for logs and metrics.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class SignatureError(VerificationError):
    """The webhook signature is missing, malformed or does not verify."""


class TimestampError(VerificationError):
    """The webhook timestamp is older or newer than the tolerance allows."""


class ReplayError(VerificationError):
    """The webhook-id was already processed within the retention window."""


class IdentityError(VerificationError):
    """The verified peer identity is not allowed here."""


class PinError(VerificationError, ssl.SSLError):
    """A certificate chained to a trusted CA but matched none of the pins or identity rules.

    It is also an :class:`ssl.SSLError` so that raising it from ``do_handshake`` fails the
    TLS handshake before any application byte is exchanged.

    Attributes:
        subject: RFC 4514 subject of the refused certificate.
        spki_pin: ``sha256/<base64>`` pin of the refused certificate's public key.
    """

    def __init__(self, message: str, *, reason: str, subject: str, spki_pin: str) -> None:
        VerificationError.__init__(self, message, reason=reason)
        self.subject = subject
        self.spki_pin = spki_pin

    def __str__(self) -> str:
        return str(self.args[0])


class DeliveryRecord(Protocol):
    """What a :class:`DeliveryError` knows of its delivery: the shape of ``DeliveryResult``.

    A protocol, so that the core's hierarchy does not import the sender that fills it in.
    """

    @property
    def url(self) -> str: ...
    @property
    def webhook_id(self) -> str: ...
    @property
    def attempts(self) -> Sequence[Any]: ...
    @property
    def ok(self) -> bool: ...
    @property
    def status_code(self) -> int | None: ...
    @property
    def elapsed_s(self) -> float: ...
    @property
    def error(self) -> DeliveryError | None: ...


class DeliveryError(MtlsHooksError):
    """A webhook could not be delivered.

    Attributes:
        result: the :class:`~mtls_hooks.DeliveryResult` recording every attempt, when known.
    """

    def __init__(self, message: str, *, result: DeliveryRecord | None = None) -> None:
        super().__init__(message)
        self.result = result

    @property
    def attempts(self) -> int:
        """How many attempts were made before giving up."""
        return 0 if self.result is None else len(self.result.attempts)


class TransportError(DeliveryError):
    """The request did not complete: connection refused or reset, timeout."""


class TLSError(TransportError):
    """The receiver's certificate is not trusted or not pinned. Never retried."""


class StatusError(DeliveryError):
    """The receiver answered with a status that is not a success.

    Attributes:
        status_code: the HTTP status of the last answer.
    """

    def __init__(
        self, message: str, *, status_code: int, result: DeliveryRecord | None = None
    ) -> None:
        super().__init__(message, result=result)
        self.status_code = status_code


class EndpointGoneError(StatusError):
    """The receiver answered 410 Gone: stop sending to this endpoint."""


class RetriesExhaustedError(DeliveryError):
    """Every allowed attempt failed, or the total deadline passed."""
