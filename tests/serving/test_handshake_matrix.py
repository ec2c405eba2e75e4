"""The pinned client succeeds; every failing twin is refused in the TLS handshake.

Real Hypercorn on 127.0.0.1, real handshakes, HTTP/1.1 and HTTP/2. Under TLS 1.3 a client
refused after its certificate was checked sees only a dropped connection, so the client side
asserts "no response" and the server side asserts the structured refusal line.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest

from mtls_hooks.core._tls import create_client_context
from mtls_hooks.testing import ServerHandle
from tests.serving.conftest import H1, H2, Cast, LogCollector, Pki, tls11_context

ContextFactory = Callable[[Pki, Cast, bool], ssl.SSLContext]


@pytest.mark.parametrize("http2", [H1, H2])
def test_pinned_client_succeeds(server: ServerHandle, pki: Pki, cast: Cast, http2: bool) -> None:
    with httpx.Client(verify=pki.context(cast.alpha, http2=http2), http2=http2) as client:
        response = client.post(server.url("/whoami"), content=b"x" * 1024)
    assert response.status_code == 200
    assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    body = response.json()
    assert body["subject"] == "CN=alpha"
    assert body["spki"] == cast.alpha.spki_pin
    assert body["body_bytes"] == 1024


def _no_certificate(pki: Pki, cast: Cast, http2: bool) -> ssl.SSLContext:
    alpn = ("h2", "http/1.1") if http2 else ("http/1.1",)
    return create_client_context(ca_file=pki.ca_file, alpn_protocols=alpn)


@dataclass(frozen=True)
class Refusal:
    make_context: ContextFactory
    reason: str
    detail: str = ""


REFUSALS = [
    pytest.param(
        Refusal(lambda p, c, h: p.context(c.stranger, http2=h), "unpinned"), id="unpinned"
    ),
    pytest.param(
        Refusal(lambda p, c, h: c.outsider.context(p.ca_file, http2=h), "cert-verify-failed"),
        id="other-ca",
    ),
    pytest.param(Refusal(_no_certificate, "no-certificate"), id="no-certificate"),
    pytest.param(
        Refusal(lambda p, c, h: p.context(c.expired, http2=h), "cert-verify-failed", "expired"),
        id="expired",
    ),
    pytest.param(
        Refusal(lambda p, c, h: p.context(c.revoked, http2=h), "cert-verify-failed", "revoked"),
        id="revoked",
    ),
    pytest.param(
        Refusal(lambda p, c, h: p.context(c.server_only, http2=h), "cert-verify-failed", "purpose"),
        id="server-eku-only",
    ),
    pytest.param(
        Refusal(lambda p, c, h: tls11_context(c.alpha, p.ca_file), "handshake-failed", "protocol"),
        id="tls1.1-offered",
    ),
]


@pytest.mark.parametrize("http2", [H1, H2])
@pytest.mark.parametrize("case", REFUSALS)
def test_refused_in_handshake(
    server: ServerHandle, pki: Pki, cast: Cast, http2: bool, case: Refusal
) -> None:
    context = case.make_context(pki, cast, http2)
    with (
        LogCollector("mtls_hooks.tls") as log,
        httpx.Client(verify=context, http2=http2) as client,
        # No HTTP response at all: refused before one HTTP byte was parsed.
        pytest.raises(httpx.TransportError),
    ):
        client.get(server.url("/whoami"))
    assert len(log.lines) == 1, log.lines
    line = log.lines[0]
    assert line.startswith("event=handshake_refused ")
    assert re.search(r" peer=127\.0\.0\.1:\d+ ", line), line
    assert f" reason={case.reason} " in line
    assert "BEGIN" not in line
    assert "PRIVATE" not in line
    if case.reason == "unpinned":
        assert f" spki={cast.stranger.spki_pin} " in line
        assert 'subject="CN=stranger"' in line
    else:
        assert " spki=- " in line  # the chain never verified: no identity to report
    assert case.detail in line.lower(), line


def test_refused_client_can_retry_with_the_right_certificate(
    server: ServerHandle, pki: Pki, cast: Cast
) -> None:
    with (
        httpx.Client(verify=pki.context(cast.stranger)) as client,
        pytest.raises(httpx.TransportError),
    ):
        client.get(server.url("/whoami"))
    with httpx.Client(verify=pki.context(cast.beta)) as client:
        assert client.get(server.url("/whoami")).json()["subject"] == "CN=beta"
