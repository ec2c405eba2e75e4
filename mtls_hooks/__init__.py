"""mtls-hooks: webhooks over mutual TLS, signed and replay-proof."""

from mtls_hooks._errors import (
    ConfigurationError,
    DeliveryError,
    EndpointGoneError,
    IdentityError,
    MtlsHooksError,
    PinError,
    ReplayError,
    RetriesExhaustedError,
    SignatureError,
    StatusError,
    TimestampError,
    TLSError,
    TransportError,
    VerificationError,
)
from mtls_hooks._identity import PeerIdentity, cert_fingerprint, spki_pin
from mtls_hooks._policy import PeerPolicy

__all__ = [
    "ConfigurationError",
    "DeliveryError",
    "EndpointGoneError",
    "IdentityError",
    "MtlsHooksError",
    "PeerIdentity",
    "PeerPolicy",
    "PinError",
    "ReplayError",
    "RetriesExhaustedError",
    "SignatureError",
    "StatusError",
    "TLSError",
    "TimestampError",
    "TransportError",
    "VerificationError",
    "cert_fingerprint",
    "spki_pin",
]
