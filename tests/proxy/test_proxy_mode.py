"""Proxy mode end to end over plain HTTP: trust rules, re-verification, what handlers see.

A real server (serve_async, Hypercorn) on 127.0.0.1; the trusted proxy is 127.0.0.2 and a
direct client comes from 127.0.0.1 (the client socket's source address is bound).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from mtls_hooks.proxy._headers import MAX_CERT_HEADER_BYTES
from mtls_hooks.serving._forwarded import forwarded_refusals
from tests.proxy.conftest import (
    DIRECT_IP,
    FORMATS,
    PROXY_IP,
    ProxyPki,
    ProxyServer,
    encode,
    request_from,
    running_proxy_server,
)

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module", params=FORMATS)
def format_server(
    request: pytest.FixtureRequest, pki: ProxyPki
) -> Iterator[tuple[str, ProxyServer]]:
    header_format: str = request.param
    with running_proxy_server(pki.config(client_cert_header=header_format)) as running:
        yield header_format, running


def test_pinned_client_through_trusted_proxy_reaches_handler(
    format_server: tuple[str, ProxyServer], pki: ProxyPki
) -> None:
    header_format, server = format_server
    answer = request_from(PROXY_IP, server.port, encode(header_format, pki.clients["good"]))
    assert answer.status == 200, answer.body
    seen = answer.json()
    assert seen["spki"] == pki.pinned_spki
    assert seen["subject"] == "CN=billing"
    assert seen["forwarded"] == {"proxy": seen["forwarded"]["proxy"], "header": header_format}
    assert seen["forwarded"]["proxy"].startswith(f"{PROXY_IP}:")
    assert seen["tls_version"] is None  # the client's TLS ended at the proxy
    # The app never sees a forwarded-certificate header it could misuse.
    assert not [h for h in seen["headers"] if "cert" in h.lower()]


# Every header a stack uses to forward a certificate or a verdict, in every spelling.
_SPOOF_NAMES = (
    "Client-Cert",
    "Client-Cert-Chain",
    "X-Forwarded-Client-Cert",
    "X-SSL-Client-Cert",
    "X-Amzn-Mtls-Clientcert",
    "X-Amzn-Mtls-Clientcert-Leaf",
    "X-Forwarded-Tls-Client-Cert",
    "X-Forwarded-Tls-Client-Cert-Info",
    "X-SSL-Client-Verify",
    "X-Client-Verify",
    "SSL-Client-Verify",
    "X-SSL-Client-S-DN",
    "X-Client-Cert-Present",
    "Cf-Client-Cert-Der-Base64",
)


def _variants(name: str) -> list[str]:
    return sorted(
        {name, name.lower(), name.upper(), name.replace("-", "_"), name.lower().replace("-", "_")}
    )


def _spoofs(pki: ProxyPki) -> list[tuple[str, str]]:
    """(header name, value) pairs: each format's valid headers, each verify header."""
    pairs: list[tuple[str, str]] = []
    for header_format in FORMATS:
        pairs.extend(encode(header_format, pki.clients["good"]).items())
    sent = {name.lower() for name, _ in pairs}
    pairs.extend((name, "SUCCESS") for name in _SPOOF_NAMES if name.lower() not in sent)
    return pairs


def test_direct_client_spoofing_any_header_is_refused(
    format_server: tuple[str, ProxyServer], pki: ProxyPki, caplog: pytest.LogCaptureFixture
) -> None:
    _, server = format_server
    caplog.set_level(logging.WARNING, logger="mtls_hooks.tls")
    tried = 0
    for name, value in _spoofs(pki):
        for variant in _variants(name):
            caplog.clear()
            answer = request_from(DIRECT_IP, server.port, [(variant, value)])
            assert answer.status == 403, (variant, answer.body)
            assert answer.headers["content-type"] == PROBLEM
            assert answer.json()["reason"] == "untrusted-proxy"
            # The refusal names the header (as the server read it, lowercased): detection,
            # not only a blanket refusal. The log has the first lines of the window.
            assert f"header {variant.lower()!r} from {DIRECT_IP}:" in answer.json()["detail"]
            if tried < forwarded_refusals.lines_per_window:
                assert f"header={variant.lower()} " in caplog.text, variant
            tried += 1
    assert tried > 60
    assert forwarded_refusals.counts["untrusted-proxy"] == tried


def test_direct_client_without_headers_is_refused_too(
    format_server: tuple[str, ProxyServer],
) -> None:
    _, server = format_server
    answer = request_from(DIRECT_IP, server.port, {})
    assert answer.status == 403
    assert answer.json()["reason"] == "untrusted-proxy"


def test_verify_success_header_alone_is_not_an_identity(
    format_server: tuple[str, ProxyServer],
) -> None:
    _, server = format_server
    answer = request_from(PROXY_IP, server.port, {"X-SSL-Client-Verify": "SUCCESS"})
    assert answer.status == 403
    assert answer.json()["reason"] == "no-certificate"


_BAD = (
    pytest.param("other-ca", "cert-verify-failed", id="another-ca"),
    pytest.param("expired", "cert-verify-failed", id="expired"),
    pytest.param("revoked", "cert-verify-failed", id="revoked"),
    pytest.param("server-only", "cert-verify-failed", id="serverauth-only"),
    pytest.param("unpinned", "unpinned", id="unpinned-same-ca"),
    pytest.param("pin-on-intermediate", "unpinned", id="pin-on-intermediate"),
)


@pytest.mark.parametrize(("client", "reason"), _BAD)
def test_bad_forwarded_certificate_is_refused(
    format_server: tuple[str, ProxyServer], pki: ProxyPki, client: str, reason: str
) -> None:
    header_format, server = format_server
    answer = request_from(PROXY_IP, server.port, encode(header_format, pki.clients[client]))
    assert answer.status == 403, answer.body
    assert answer.headers["content-type"] == PROBLEM
    assert answer.json()["reason"] == reason


def _junk(header_format: str, pki: ProxyPki) -> dict[str, dict[str, str]]:
    good = encode(header_format, pki.clients["good"])
    name = next(iter(good))
    truncated = pki.clients["good"][0][:200]
    return {
        "junk-base64": {name: ":!!not base64!!:" if header_format == "rfc9440" else "%%%***"},
        "truncated-der": encode(header_format, [truncated]),
        "100kb": {name: "A" * 100_000},
    }


@pytest.mark.parametrize("case", ["junk-base64", "truncated-der", "100kb"])
def test_malformed_forwarded_header_is_a_4xx_problem(
    format_server: tuple[str, ProxyServer], pki: ProxyPki, case: str
) -> None:
    header_format, server = format_server
    answer = request_from(PROXY_IP, server.port, _junk(header_format, pki)[case])
    assert 400 <= answer.status < 500, (answer.status, answer.body)
    assert answer.headers["content-type"] == PROBLEM
    if case == "100kb":
        assert answer.status == 431
        assert MAX_CERT_HEADER_BYTES < 100_000


def test_duplicate_header_from_proxy_is_refused(pki: ProxyPki) -> None:
    # A client-sent copy that the proxy appended to instead of replacing: ambiguous, refused.
    with running_proxy_server(pki.config(client_cert_header="nginx")) as server:
        good = encode("nginx", pki.clients["good"])["X-SSL-Client-Cert"]
        answer = request_from(
            PROXY_IP, server.port, [("X-SSL-Client-Cert", good), ("X-SSL-Client-Cert", good)]
        )
    assert answer.status == 400


def test_websocket_from_untrusted_peer_is_closed_before_accept(
    format_server: tuple[str, ProxyServer], pki: ProxyPki
) -> None:
    _, server = format_server
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
        **encode("nginx", pki.clients["good"]),
    }
    answer = request_from(DIRECT_IP, server.port, upgrade, path="/ws")
    assert answer.status == 403  # hypercorn's answer to a close before accept


def test_header_limit_holds_on_a_plain_listener(pki: ProxyPki) -> None:
    with running_proxy_server(pki.config(max_header_bytes=8192)) as server:
        good = encode("nginx", pki.clients["good"])
        assert request_from(PROXY_IP, server.port, good).status == 200
        answer = request_from(PROXY_IP, server.port, {**good, "X-Padding": "p" * 8192})
    assert answer.status == 431
    assert answer.json()["reason"] == "headers"
