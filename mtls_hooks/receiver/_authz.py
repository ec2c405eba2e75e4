"""Per-route authorization for Quart views, from the verified client certificate.

The handshake policy decides who may connect at all; :func:`require_peer` narrows a single
route to some of those identities and answers 403 with an RFC 9457 problem body otherwise.
Both read the identity from the ASGI ``tls`` extension the mtls-hooks server puts in every
scope, so they never trust a header a proxy or client could forge.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, TypeVar

from mtls_hooks.core._errors import ConfigurationError, IdentityError
from mtls_hooks.core._identity import PeerIdentity, peer_from_scope
from mtls_hooks.core._policy import PeerPolicy
from mtls_hooks.receiver._asgi import lean_scope
from mtls_hooks.receiver._responses import problem_response

__all__ = ["current_peer", "require_peer"]

P = ParamSpec("P")
R = TypeVar("R")


def _current_scope() -> Any:
    from quart import has_request_context, has_websocket_context, request, websocket

    if has_request_context():
        return request.scope
    if has_websocket_context():
        return websocket.scope
    scope = lean_scope()  # a webhook handler started on the lean path (receiver/_asgi.py)
    if scope is not None:
        return scope
    raise IdentityError("current_peer() needs a request or websocket context", reason="no-context")


def current_peer() -> PeerIdentity:
    """Return the verified client identity of the current Quart request or websocket.

    Raises:
        IdentityError: outside a request, or when the scope carries no verified client
            certificate (the app is not served by mtls-hooks, or the test client was used).
    """
    identity = peer_from_scope(_current_scope())
    if identity is None:
        raise IdentityError(
            "no verified client certificate in this scope: serve the app with mtls_hooks.serve",
            reason="no-client-certificate",
        )
    return identity


def require_peer(
    *,
    pins: Iterable[str] = (),
    allow: Iterable[str] = (),
    policy: PeerPolicy | None = None,
) -> Callable[[Callable[P, Any]], Callable[P, Any]]:
    """Admit only matching client identities to a Quart view; others get a 403 problem.

    Use below the route decorator::

        @app.post("/billing")
        @require_peer(allow=["uri:spiffe://example.org/billing"])
        async def billing() -> str: ...

    Args:
        pins: SPKI pins or certificate fingerprints admitted on this route.
        allow: identity rules (``dns:``, ``uri:``, ``email:``, ``subject:``).
        policy: a ready :class:`PeerPolicy`, merged with ``pins`` and ``allow``.

    Raises:
        ConfigurationError: a malformed rule, or no rule at all (a route nobody can call is
            a mistake, not a policy).
    """
    combined = PeerPolicy.from_rules(pins, allow)
    if policy is not None:
        combined = combined.merged(policy)
    if combined.is_empty:
        raise ConfigurationError("require_peer() needs at least one pin, rule or policy")

    def decorator(view: Callable[P, Any]) -> Callable[P, Any]:
        @functools.wraps(view)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> Any:
            identity = peer_from_scope(_current_scope())
            if identity is None:
                return problem_response(
                    403,
                    detail="no verified client certificate on this connection",
                    reason="no-client-certificate",
                )
            if not combined.allows(identity):
                return problem_response(
                    403,
                    detail=f"client {identity.subject!r} is not allowed on this route",
                    reason="identity-not-allowed",
                    spki_pin=identity.spki_pin,
                )
            result = view(*args, **kwargs)
            return await result if inspect.isawaitable(result) else result

        return guarded

    return decorator
