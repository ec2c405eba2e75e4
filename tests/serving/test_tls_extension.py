"""Every HTTP and WebSocket scope carries ``extensions["tls"]`` (ASGI TLS spec 0.2).

Hypercorn 0.18 never sets it; mtls-hooks adds it by swapping ``hypercorn.asyncio.run.
TCPServer``. If a Hypercorn upgrade renames or stops looking up that class, these tests fail
with a message saying so: do not "fix" them by loosening the assertions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import hypercorn.asyncio.run as hypercorn_run
import hypercorn.asyncio.tcp_server as hypercorn_tcp_server
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
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
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
    _assert_spec_tls(body["tls"], pki, cast)


def _first_ws_message(url: str, context: ssl.SSLContext) -> Any:
    """Open a WebSocket over mTLS (RFC 6455 by hand) and return its first message, parsed.

    A blocking socket closes when the ``with`` ends: no event loop left to finish a TLS
    close exchange later, so nothing to wait for.
    """
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    request = (
        f"GET {parts.path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with (
        socket.create_connection((parts.hostname, parts.port), timeout=10.0) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(request.encode("ascii"))
        stream = tls.makefile("rb")
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = stream.readline()
            assert line, f"connection closed during the upgrade: {head!r}"
            head += line
        assert head.startswith(b"HTTP/1.1 101"), head
        # RFC 6455 §4.2.2 fixes SHA-1 here; it is a handshake check, not security.
        digest = hashlib.sha1((key + _WS_GUID).encode(), usedforsecurity=False).digest()
        accept = base64.b64encode(digest).decode()
        lines = head.decode("latin-1").split("\r\n")[1:]
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
        assert headers["sec-websocket-accept"] == accept
        first, second = stream.read(2)
        assert first == 0x81, f"not one final text frame: {first:#x}"  # FIN + text
        assert not second & 0x80  # server frames are never masked
        size = second & 0x7F
        if size == 126:
            size = int.from_bytes(stream.read(2), "big")
        elif size == 127:
            size = int.from_bytes(stream.read(8), "big")
        return json.loads(stream.read(size))


def test_websocket_scope_has_tls(raw_server: ServerHandle, pki: Pki, cast: Cast) -> None:
    body = _first_ws_message(raw_server.url("/ws"), pki.context(cast.alpha))
    assert body["type"] == "websocket"
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
    assert _ORIGINAL_TCP_SERVER is hypercorn_tcp_server.TCPServer, UPGRADE_BROKE_IT
    before = hypercorn_run.TCPServer  # type: ignore[attr-defined]
    with running_server(raw_app, pki.config(cast.alpha)):
        assert hypercorn_run.TCPServer is not _ORIGINAL_TCP_SERVER  # type: ignore[attr-defined]
    assert hypercorn_run.TCPServer is before  # type: ignore[attr-defined]
