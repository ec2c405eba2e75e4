"""HTTP/1.1 requests on our connections: the header list read once, upgrades left to hypercorn.

``_serving._H11Protocol`` builds a plain request's stream itself (one pass over h11's headers)
and hands anything that may change protocol (an ``upgrade`` header, the HTTP/2 preface) to
hypercorn. Raw TLS sockets, so every byte on the wire is the test's.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import pytest

from mtls_hooks.serving._serving import _H11Protocol
from mtls_hooks.testing import ServerHandle, running_server
from tests.serving.conftest import Cast, Pki


async def echo_headers(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answer with the scope's header list, method, path and HTTP version."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    body = json.dumps(
        {
            "headers": [
                [name.decode("latin-1"), value.decode("latin-1")]
                for name, value in scope["headers"]
            ],
            "method": scope["method"],
            "path": scope["path"],
            "http_version": scope["http_version"],
            "tls": "tls" in scope["extensions"],
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def echo_server(pki: Pki, cast: Cast) -> Iterator[ServerHandle]:
    with running_server(echo_headers, pki.config(cast.alpha)) as server:
        yield server


def _exchange(server: ServerHandle, context: ssl.SSLContext, request: bytes, want: int) -> bytes:
    """Send ``request`` on a new connection; read ``want`` bytes, or one whole HTTP/1.1
    response (``want=0``: its head and its Content-Length body), or until the server closes."""
    with (
        socket.create_connection((server.host, server.port), timeout=10.0) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(request)
        received = b""
        while not want or len(received) < want:
            chunk = tls.recv(65536)
            if not chunk:
                break
            received += chunk
            head, sep, body = received.partition(b"\r\n\r\n")
            if not want and sep:
                lengths = [
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")[1:]
                    if line.lower().startswith(b"content-length:")
                ]
                if len(body) >= (lengths[0] if lengths else 0):
                    break
        return received


def _json_body(response: bytes) -> Any:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return json.loads(body)


def _request(*headers: str, method: str = "POST", body: bytes = b"") -> bytes:
    lines = [f"{method} /echo?x=1 HTTP/1.1", "Host: localhost", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def test_plain_request_scope_headers_are_h11s_list(
    echo_server: ServerHandle, pki: Pki, cast: Cast, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Our protocol class, not hypercorn's, built the stream: the same answer from hypercorn's
    # own code path would prove nothing about ours.
    built: list[bytes] = []
    create_stream = _H11Protocol._create_stream

    async def counted(self: _H11Protocol, request: Any) -> None:
        built.append(request.method)
        await create_stream(self, request)

    monkeypatch.setattr(_H11Protocol, "_create_stream", counted)
    request = _request("X-Mixed-Case:  padded value ", "x-repeat: 1", "X-Repeat: 2", body=b"{}")
    response = _exchange(echo_server, pki.context(cast.alpha), request, 0)
    echoed = _json_body(response)
    assert built == [b"POST"]
    # Names lower-cased, values stripped of surrounding whitespace, order and repeats kept:
    # exactly list(h11.Request.headers), as hypercorn builds it.
    assert echoed["headers"] == [
        ["host", "localhost"],
        ["x-mixed-case", "padded value"],
        ["x-repeat", "1"],
        ["x-repeat", "2"],
        ["content-length", "2"],
    ]
    assert echoed["method"] == "POST"
    assert echoed["path"] == "/echo"
    assert echoed["http_version"] == "1.1"
    assert echoed["tls"] is True


def test_malformed_header_is_still_refused_by_h11(
    echo_server: ServerHandle, pki: Pki, cast: Cast
) -> None:
    request = _request("Bad Header: x", body=b"{}")  # whitespace in a field name
    response = _exchange(echo_server, pki.context(cast.alpha), request, 0)
    assert response.startswith(b"HTTP/1.1 400"), response


def test_h2c_upgrade_without_body_still_reaches_hypercorn(
    echo_server: ServerHandle, pki: Pki, cast: Cast
) -> None:
    request = _request(
        "Connection: Upgrade, HTTP2-Settings",
        "Upgrade: h2c",
        "HTTP2-Settings: AAMAAABkAAQAAP__",
        method="GET",
    )
    response = _exchange(echo_server, pki.context(cast.alpha), request, 12)
    assert response.startswith(b"HTTP/1.1 101"), response


def test_h2c_upgrade_with_body_is_answered_in_http_1_1(
    echo_server: ServerHandle, pki: Pki, cast: Cast
) -> None:
    request = _request(
        "Connection: Upgrade, HTTP2-Settings",
        "Upgrade: h2c",
        "HTTP2-Settings: AAMAAABkAAQAAP__",
        body=b"{}",
    )
    echoed = _json_body(_exchange(echo_server, pki.context(cast.alpha), request, 0))
    assert ["upgrade", "h2c"] in echoed["headers"]


def test_http2_preface_on_an_http_1_1_connection_switches_to_http2(
    echo_server: ServerHandle, pki: Pki, cast: Cast
) -> None:
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame
    response = _exchange(echo_server, pki.context(cast.alpha), preface + settings, 9)
    # The server's first frame is its SETTINGS (type 4 on stream 0), not an HTTP/1.1 answer.
    assert not response.startswith(b"HTTP/1.1"), response
    assert response[3] == 0x04, response
