"""Per-route authorization: ``require_peer`` answers 403 with an RFC 9457 problem."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from mtls_hooks.core._errors import ConfigurationError, IdentityError
from mtls_hooks.receiver._authz import current_peer, require_peer
from mtls_hooks.testing import ServerHandle
from tests.serving.apps import app
from tests.serving.conftest import H1, H2, Cast, Pki


@pytest.mark.parametrize("http2", [H1, H2])
def test_allowed_identity_reaches_the_route(
    server: ServerHandle, pki: Pki, cast: Cast, http2: bool
) -> None:
    with httpx.Client(verify=pki.context(cast.billing, http2=http2), http2=http2) as client:
        response = client.get(server.url("/billing"))
    assert response.status_code == 200
    assert response.json() == {"ok": True, "subject": "CN=billing"}


@pytest.mark.parametrize("http2", [H1, H2])
def test_other_identity_gets_403_problem(
    server: ServerHandle, pki: Pki, cast: Cast, http2: bool
) -> None:
    with httpx.Client(verify=pki.context(cast.alpha, http2=http2), http2=http2) as client:
        response = client.get(server.url("/billing"))
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    problem = response.json()
    assert problem["status"] == 403
    assert problem["title"] == "Forbidden"
    assert problem["reason"] == "identity-not-allowed"
    assert "CN=alpha" in problem["detail"]
    assert problem["spki_pin"] == cast.alpha.spki_pin


def test_scope_without_tls_gets_403_not_500() -> None:
    # Quart's test client builds scopes without the tls extension: as if served elsewhere.
    async def call() -> tuple[int, dict[str, object]]:
        response = await app.test_client().get("/billing")
        return response.status_code, await response.get_json()

    status, problem = asyncio.run(call())
    assert status == 403
    assert problem["reason"] == "no-client-certificate"


def test_current_peer_outside_a_request() -> None:
    with pytest.raises(IdentityError, match="request or websocket context") as info:
        current_peer()
    assert info.value.reason == "no-context"


def test_require_peer_without_rules_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="at least one"):
        require_peer()


def test_require_peer_rejects_malformed_rules() -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'uri'"):
        require_peer(allow=["url:spiffe://x/y"])
