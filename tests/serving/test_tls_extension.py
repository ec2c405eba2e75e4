"""Every HTTP and WebSocket scope carries ``extensions["tls"]`` (ASGI TLS spec 0.2).

Hypercorn 0.18 never sets it; mtls-hooks adds it by swapping ``hypercorn.asyncio.run.
TCPServer``. If a Hypercorn upgrade renames or stops looking up that class, these tests fail
with a message saying so: do not "fix" them by loosening the assertions.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx
import hypercorn.asyncio.run as hypercorn_run
import pytest

from mtls_hooks.core._identity import peer_from_scope
from mtls_hooks.serving._serving import _ORIGINAL_TCP_SERVER
from mtls_hooks.testing import ServerHandle, running_server
from tests.serving.apps import raw_app
from tests.serving.conftest import H1, H2, Cast, Pki, pinned_everyone

SPEC_KEYS = {
    "server_cert",
    "client_cert_chain",
    "client_cert_name",
    "client_cert_error",
    "tls_version",
    "cipher_suite",
}
UPGRADE_BROKE_IT = (
    "the ASGI 'tls' extension no longer reaches the scope: a Hypercorn change broke the "
    "TCPServer swap in mtls_hooks/_serving.py (see ../shared/DESIGN.md); pin hypercorn back "
    "or port the swap before releasing"
)


@pytest.fixture(scope="module")
def raw_server(pki: Pki, cast: Cast) -> Iterator[ServerHandle]:
    with running_server(raw_app, pki.config(*pinned_everyone(cast))) as handle:
        yield handle


def _assert_spec_tls(tls: Any, pki: Pki, cast: Cast) -> None:
    assert isinstance(tls, dict), UPGRADE_BROKE_IT
    assert set(tls) == SPEC_KEYS
    leaf = cast.alpha.issued.cert_pem.bytes().decode("ascii")
    assert ssl.PEM_cert_to_DER_cert(tls["client_cert_chain"][0]) == ssl.PEM_cert_to_DER_cert(leaf)
    # leaf first, then the issuing CA: the verified chain, not what the client claimed
    assert len(tls["client_cert_chain"]) == 2
    assert tls["client_cert_name"] == "CN=alpha"
    assert tls["client_cert_error"] is None
    server_pem = pki.server.cert_pem.bytes().decode("ascii")
    assert ssl.PEM_cert_to_DER_cert(tls["server_cert"]) == ssl.PEM_cert_to_DER_cert(server_pem)
    assert tls["tls_version"] == 0x0304
    assert isinstance(tls["cipher_suite"], int)
    assert tls["cipher_suite"] in (0x1301, 0x1302, 0x1303)  # TLS 1.3 AEAD suites
    identity = peer_from_scope({"extensions": {"tls": tls}})
    assert identity is not None
    assert identity.spki_pin == cast.alpha.spki_pin


@pytest.mark.parametrize("http2", [H1, H2])
def test_http_scope_has_tls(raw_server: ServerHandle, pki: Pki, cast: Cast, http2: bool) -> None:
    with httpx.Client(verify=pki.context(cast.alpha, http2=http2), http2=http2) as client:
        body = client.get(raw_server.url("/")).json()
    assert body["type"] == "http"
    assert body["tls"] is not None, UPGRADE_BROKE_IT
    _assert_spec_tls(body["tls"], pki, cast)


def _first_ws_message(url: str, context: ssl.SSLContext) -> Any:
    """Open a WebSocket over mTLS with aiohttp and return its first message, parsed."""

    async def fetch() -> Any:
        connector = aiohttp.TCPConnector(ssl=context)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.ws_connect(url.replace("https", "wss")) as ws,
        ):
            body = json.loads(await ws.receive_str())
        # aiohttp closes an SSL transport asynchronously: give the TLS close exchange its loop
        # turns before asyncio.run() closes the loop (aiohttp docs, "Graceful Shutdown"), or
        # the socket is collected unclosed during a later test.
        await asyncio.sleep(0.25)
        return body

    return asyncio.run(fetch())


def test_websocket_scope_has_tls(raw_server: ServerHandle, pki: Pki, cast: Cast) -> None:
    body = _first_ws_message(raw_server.url("/ws"), pki.context(cast.alpha))
    assert body["type"] == "websocket"
    assert body["tls"] is not None, UPGRADE_BROKE_IT
    _assert_spec_tls(body["tls"], pki, cast)


def test_quart_websocket_sees_peer(server: ServerHandle, pki: Pki, cast: Cast) -> None:
    body = _first_ws_message(server.url("/ws"), pki.context(cast.beta))
    assert body["subject"] == "CN=beta"
    assert set(body["tls_keys"]) == SPEC_KEYS


def test_each_request_gets_its_own_tls_dict(raw_server: ServerHandle, pki: Pki, cast: Cast) -> None:
    # Keep-alive: the same connection serves both; an app mutating its scope's tls dict must
    # not change what the next request sees (raw_app does not mutate, so compare values).
    with httpx.Client(verify=pki.context(cast.alpha)) as client:
        first = client.get(raw_server.url("/")).json()["tls"]
        second = client.get(raw_server.url("/")).json()["tls"]
    assert first == second


def test_hypercorn_patch_is_scoped(pki: Pki, cast: Cast) -> None:
    assert _ORIGINAL_TCP_SERVER is not None, UPGRADE_BROKE_IT
    before = hypercorn_run.TCPServer  # type: ignore[attr-defined]
    with running_server(raw_app, pki.config(cast.alpha)):
        assert hypercorn_run.TCPServer is not _ORIGINAL_TCP_SERVER  # type: ignore[attr-defined]
    assert hypercorn_run.TCPServer is before  # type: ignore[attr-defined]
