"""mtls-hooks: webhooks over mutual TLS, signed, pinned and replay-proof.

Three parts share one security core:

* the receiver: :class:`WebhookReceiver` (a Quart extension) served by :func:`serve` on
  Hypercorn, with client certificates required and pinned inside the TLS handshake;
* the sender: :class:`WebhookSender` and :class:`AsyncWebhookSender`;
* the core: :class:`PeerPolicy` pins and identity rules, :class:`Signer` and
  :class:`Verifier` (Standard Webhooks ``v1`` and ``v1a``), the TLS contexts.

The receiver, serving and sender names are imported on first use (PEP 562), so that a
sending application never imports Quart or Hypercorn and a receiver never imports aiohttp.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
from mtls_hooks._identity import PeerIdentity, cert_fingerprint, peer_from_scope, spki_pin
from mtls_hooks._policy import PeerPolicy
from mtls_hooks._signing import (
    Ed25519SigningKey,
    Ed25519VerifyKey,
    HmacSecret,
    SignedHeaders,
    Signer,
    SigningKey,
    VerifiedMessage,
    Verifier,
    VerifyKey,
    parse_key,
)
from mtls_hooks._tls import PinningContext, create_client_context, create_server_context

if TYPE_CHECKING:
    from mtls_hooks._authz import current_peer, require_peer
    from mtls_hooks._config import ServerConfig
    from mtls_hooks._events import WebhookEvent
    from mtls_hooks._receiver import WebhookEndpoint, WebhookReceiver
    from mtls_hooks._replay import ClaimState, DedupeStore, MemoryDedupeStore, SQLiteDedupeStore
    from mtls_hooks._results import Attempt, DeliveryResult
    from mtls_hooks._retry import RetryPolicy
    from mtls_hooks._sender import WebhookMessage
    from mtls_hooks._sender_async import AsyncWebhookSender
    from mtls_hooks._sender_sync import WebhookSender
    from mtls_hooks._serving import serve_async
    from mtls_hooks._workers import serve

__version__ = "0.1.0"

__all__ = [
    "AsyncWebhookSender",
    "Attempt",
    "ClaimState",
    "ConfigurationError",
    "DedupeStore",
    "DeliveryError",
    "DeliveryResult",
    "Ed25519SigningKey",
    "Ed25519VerifyKey",
    "EndpointGoneError",
    "HmacSecret",
    "IdentityError",
    "MemoryDedupeStore",
    "MtlsHooksError",
    "PeerIdentity",
    "PeerPolicy",
    "PinError",
    "PinningContext",
    "ReplayError",
    "RetriesExhaustedError",
    "RetryPolicy",
    "SQLiteDedupeStore",
    "ServerConfig",
    "SignatureError",
    "SignedHeaders",
    "Signer",
    "SigningKey",
    "StatusError",
    "TLSError",
    "TimestampError",
    "TransportError",
    "VerificationError",
    "VerifiedMessage",
    "Verifier",
    "VerifyKey",
    "WebhookEndpoint",
    "WebhookEvent",
    "WebhookMessage",
    "WebhookReceiver",
    "WebhookSender",
    "cert_fingerprint",
    "create_client_context",
    "create_server_context",
    "current_peer",
    "parse_key",
    "peer_from_scope",
    "require_peer",
    "serve",
    "serve_async",
    "spki_pin",
]

_LAZY = {
    "AsyncWebhookSender": "mtls_hooks._sender_async",
    "Attempt": "mtls_hooks._results",
    "ClaimState": "mtls_hooks._replay",
    "DedupeStore": "mtls_hooks._replay",
    "DeliveryResult": "mtls_hooks._results",
    "MemoryDedupeStore": "mtls_hooks._replay",
    "RetryPolicy": "mtls_hooks._retry",
    "SQLiteDedupeStore": "mtls_hooks._replay",
    "ServerConfig": "mtls_hooks._config",
    "WebhookEndpoint": "mtls_hooks._receiver",
    "WebhookEvent": "mtls_hooks._events",
    "WebhookMessage": "mtls_hooks._sender",
    "WebhookReceiver": "mtls_hooks._receiver",
    "WebhookSender": "mtls_hooks._sender_sync",
    "current_peer": "mtls_hooks._authz",
    "require_peer": "mtls_hooks._authz",
    "serve": "mtls_hooks._workers",
    "serve_async": "mtls_hooks._serving",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mtls_hooks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
