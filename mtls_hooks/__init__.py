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

from mtls_hooks.core._errors import (
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
from mtls_hooks.core._identity import PeerIdentity, cert_fingerprint, peer_from_scope, spki_pin
from mtls_hooks.core._policy import PeerPolicy
from mtls_hooks.core._signing import (
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
from mtls_hooks.core._tls import PinningContext, create_client_context, create_server_context

if TYPE_CHECKING:
    from mtls_hooks.core._events import WebhookEvent
    from mtls_hooks.inbox._inbox import Inbox
    from mtls_hooks.inbox._retry import InboxRetry
    from mtls_hooks.inbox._worker import InboxWorker
    from mtls_hooks.metrics._registry import enable_metrics
    from mtls_hooks.outbox._endpoint import OutboxEndpoint, RetrySettings
    from mtls_hooks.outbox._outbox import AsyncOutbox, Outbox, UnknownEndpointError
    from mtls_hooks.outbox._worker import DeliveryWorker
    from mtls_hooks.queue._protocol import JobState, QueueStore, StoreUnavailableError
    from mtls_hooks.receiver._authz import current_peer, require_peer
    from mtls_hooks.receiver._receiver import WebhookEndpoint, WebhookReceiver
    from mtls_hooks.sender._async import AsyncWebhookSender
    from mtls_hooks.sender._base import WebhookMessage
    from mtls_hooks.sender._results import Attempt, DeliveryResult
    from mtls_hooks.sender._retry import RetryPolicy
    from mtls_hooks.sender._sync import WebhookSender
    from mtls_hooks.serving._config import ServerConfig
    from mtls_hooks.serving._serving import serve_async
    from mtls_hooks.serving._workers import serve
    from mtls_hooks.stores._postgres import PostgresDedupeStore
    from mtls_hooks.stores._redis import RedisDedupeStore
    from mtls_hooks.stores._replay import (
        ClaimState,
        DedupeStore,
        MemoryDedupeStore,
        SQLiteDedupeStore,
    )

__version__ = "0.1.0"

__all__ = [
    "AsyncOutbox",
    "AsyncWebhookSender",
    "Attempt",
    "ClaimState",
    "ConfigurationError",
    "DedupeStore",
    "DeliveryError",
    "DeliveryResult",
    "DeliveryWorker",
    "Ed25519SigningKey",
    "Ed25519VerifyKey",
    "EndpointGoneError",
    "HmacSecret",
    "IdentityError",
    "Inbox",
    "InboxRetry",
    "InboxWorker",
    "JobState",
    "MemoryDedupeStore",
    "MtlsHooksError",
    "Outbox",
    "OutboxEndpoint",
    "PeerIdentity",
    "PeerPolicy",
    "PinError",
    "PinningContext",
    "PostgresDedupeStore",
    "QueueStore",
    "RedisDedupeStore",
    "ReplayError",
    "RetriesExhaustedError",
    "RetryPolicy",
    "RetrySettings",
    "SQLiteDedupeStore",
    "ServerConfig",
    "SignatureError",
    "SignedHeaders",
    "Signer",
    "SigningKey",
    "StatusError",
    "StoreUnavailableError",
    "TLSError",
    "TimestampError",
    "TransportError",
    "UnknownEndpointError",
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
    "enable_metrics",
    "parse_key",
    "peer_from_scope",
    "require_peer",
    "serve",
    "serve_async",
    "spki_pin",
]

_LAZY = {
    "AsyncOutbox": "mtls_hooks.outbox._outbox",
    "AsyncWebhookSender": "mtls_hooks.sender._async",
    "Attempt": "mtls_hooks.sender._results",
    "ClaimState": "mtls_hooks.stores._replay",
    "DedupeStore": "mtls_hooks.stores._replay",
    "DeliveryResult": "mtls_hooks.sender._results",
    "DeliveryWorker": "mtls_hooks.outbox._worker",
    "Inbox": "mtls_hooks.inbox._inbox",
    "InboxRetry": "mtls_hooks.inbox._retry",
    "InboxWorker": "mtls_hooks.inbox._worker",
    "JobState": "mtls_hooks.queue._protocol",
    "MemoryDedupeStore": "mtls_hooks.stores._replay",
    "Outbox": "mtls_hooks.outbox._outbox",
    "OutboxEndpoint": "mtls_hooks.outbox._endpoint",
    "PostgresDedupeStore": "mtls_hooks.stores._postgres",
    "QueueStore": "mtls_hooks.queue._protocol",
    "RedisDedupeStore": "mtls_hooks.stores._redis",
    "RetryPolicy": "mtls_hooks.sender._retry",
    "RetrySettings": "mtls_hooks.outbox._endpoint",
    "SQLiteDedupeStore": "mtls_hooks.stores._replay",
    "ServerConfig": "mtls_hooks.serving._config",
    "StoreUnavailableError": "mtls_hooks.queue._protocol",
    "UnknownEndpointError": "mtls_hooks.outbox._outbox",
    "WebhookEndpoint": "mtls_hooks.receiver._receiver",
    "WebhookEvent": "mtls_hooks.core._events",
    "WebhookMessage": "mtls_hooks.sender._base",
    "WebhookReceiver": "mtls_hooks.receiver._receiver",
    "WebhookSender": "mtls_hooks.sender._sync",
    "current_peer": "mtls_hooks.receiver._authz",
    "enable_metrics": "mtls_hooks.metrics._registry",
    "require_peer": "mtls_hooks.receiver._authz",
    "serve": "mtls_hooks.serving._workers",
    "serve_async": "mtls_hooks.serving._serving",
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
