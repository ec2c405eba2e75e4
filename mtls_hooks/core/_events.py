"""What a webhook handler receives, and the shapes of handlers and event-type extractors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from mtls_hooks.core._identity import PeerIdentity

__all__ = [
    "AsyncHandler",
    "EventTypeExtractor",
    "Handler",
    "HandlerTable",
    "WebhookEvent",
    "default_event_type",
    "find_handler",
]


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One authentic, fresh, first-seen webhook, as handed to a handler.

    Built only after every check passed: peer identity, source address, credentials,
    content type, size, signature, timestamp and dedupe.

    Attributes:
        id: the ``webhook-id``, identical on every retry of this message: use it as the
            idempotency key for side effects outside this process.
        type: the event type, e.g. ``"invoice.paid"``.
        timestamp: the verified ``webhook-timestamp`` (integer seconds since the epoch).
        payload: the body parsed as JSON.
        raw_body: the exact bytes that were signed.
        peer: the verified client certificate identity, ``None`` when the endpoint does not
            require one.
        endpoint: the name of the endpoint that received it.
    """

    id: str
    type: str
    timestamp: int
    # Out of the repr: a body may hold personal data, and events end up in logs and tracebacks.
    payload: Any = field(repr=False)
    raw_body: bytes = field(repr=False)
    peer: PeerIdentity | None
    endpoint: str


Handler: TypeAlias = Callable[[WebhookEvent], Any] | Callable[[WebhookEvent], Awaitable[Any]]
"""A sync or async callable taking a :class:`WebhookEvent`.

It returns ``None`` (the receiver acknowledges with 204) or anything Quart accepts as a
response. Sync handlers run in a worker thread so they never block the event loop. A handler
runs to its end even if the sender disconnects before it returns.
"""

EventTypeExtractor: TypeAlias = Callable[[Any], object]
"""Maps the parsed JSON payload to its event type; anything but a non-empty ``str`` is a 400."""


def default_event_type(payload: Any) -> object:
    """Return the ``type`` member of a JSON object, as Standard Webhooks payloads carry it."""
    return payload.get("type") if isinstance(payload, dict) else None


AsyncHandler: TypeAlias = Callable[[WebhookEvent], Awaitable[Any]]
"""A handler as the receiver keeps it: sync ones are wrapped to run in a worker thread."""

HandlerTable: TypeAlias = Mapping[tuple[str | None, str | None], AsyncHandler]
"""Handlers by ``(endpoint, event type)``; ``None`` in either place is a fallback."""


def find_handler(handlers: HandlerTable, endpoint: str, event_type: str) -> AsyncHandler | None:
    """The handler of ``event_type`` on ``endpoint``: the most specific registration wins.

    Order: this endpoint's handler of the type, the type's handler on every endpoint, this
    endpoint's fallback, the global fallback.
    """
    return (
        handlers.get((endpoint, event_type))
        or handlers.get((None, event_type))
        or handlers.get((endpoint, None))
        or handlers.get((None, None))
    )
