"""The header parsers: each format round-trips, and junk only ever raises ForwardedCertError."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import random
from urllib.parse import quote

import pytest

from mtls_hooks.proxy._headers import (
    HEADER_FORMATS,
    MAX_CERT_HEADER_BYTES,
    MAX_CHAIN_CERTS,
    ForwardedCertError,
    is_client_cert_header,
    parse_forwarded_cert,
)
from mtls_hooks.proxy._verify import CertificateVerifier
from tests.proxy.conftest import FORMATS, ProxyPki, encode


def _pem(der: bytes) -> str:
    body = base64.b64encode(der).decode()
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"


def _lines(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode(), value.encode()) for name, value in headers.items()]


def test_formats_are_the_documented_five() -> None:
    assert HEADER_FORMATS == FORMATS


@pytest.mark.parametrize("header_format", FORMATS)
def test_leaf_and_chain_round_trip(header_format: str, pki: ProxyPki) -> None:
    chain = pki.clients["pin-on-intermediate"]
    parsed = parse_forwarded_cert(header_format, _lines(encode(header_format, chain)))
    assert parsed is not None
    assert parsed.leaf_der == chain[0]
    # nginx's $ssl_client_escaped_cert carries the leaf only.
    assert parsed.chain_der == (() if header_format == "nginx" else tuple(chain[1:]))
    assert parsed.source == header_format


@pytest.mark.parametrize("header_format", FORMATS)
def test_absent_header_is_none(header_format: str) -> None:
    assert parse_forwarded_cert(header_format, [(b"host", b"x")]) is None


def test_alb_plus_is_not_a_space(pki: ProxyPki) -> None:
    # Find a certificate whose base64 holds "+": unquote_plus would corrupt it.
    der = pki.clients["good"][0]
    text = encode("alb", [der])["X-Amzn-Mtls-Clientcert"]
    assert "+" in text or "+" not in base64.b64encode(der).decode()
    parsed = parse_forwarded_cert("alb", _lines({"X-Amzn-Mtls-Clientcert": text}))
    assert parsed is not None
    assert parsed.leaf_der == der


def test_alb_decodes_plus_literally() -> None:
    # A synthetic value: "+" must stay "+", so the base64 below stays valid.
    der = b"\x30\x00\x3e\xfb\xef\xbe"  # base64 "MAA+++++"
    pem = _pem(der)
    assert "+" in pem
    parsed = parse_forwarded_cert(
        "alb", [(b"x-amzn-mtls-clientcert", quote(pem, safe="+").encode())]
    )
    assert parsed is not None
    assert parsed.leaf_der == der


def test_xfcc_reads_the_last_element_and_checks_its_hash(pki: ProxyPki) -> None:
    der = pki.clients["good"][0]
    other = pki.clients["unpinned"][0]
    value = (
        encode("xfcc", [other])["X-Forwarded-Client-Cert"] + ",Cert=" + quote(_pem(der), safe="")
    )
    parsed = parse_forwarded_cert("xfcc", [(b"x-forwarded-client-cert", value.encode())])
    assert parsed is not None
    assert parsed.leaf_der == der
    bad = value + f";Hash={hashlib.sha256(other).hexdigest()}"
    with pytest.raises(ForwardedCertError, match="Hash does not match"):
        parse_forwarded_cert("xfcc", [(b"x-forwarded-client-cert", bad.encode())])


@pytest.mark.parametrize(
    "value",
    [
        pytest.param('Cert="unterminated', id="unbalanced-quote"),
        pytest.param("Cert", id="no-equals"),
        pytest.param('Cert=a"b', id="stray-quote"),
        pytest.param("Cert=x;Cert=y", id="cert-twice"),
        pytest.param("Cert=%ZZ%", id="bad-percent"),
        pytest.param(
            "Cert=" + quote("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"),
            id="not-der",
        ),
    ],
)
def test_xfcc_junk_is_a_typed_error(value: str) -> None:
    with pytest.raises(ForwardedCertError) as info:
        parse_forwarded_cert("xfcc", [(b"x-forwarded-client-cert", value.encode())])
    assert info.value.status == 400


_JUNK = [
    pytest.param(b":", id="lone-colon"),
    pytest.param(b"::", id="empty-sf"),
    pytest.param(b":!!!:", id="sf-junk"),
    pytest.param(b"%", id="percent"),
    pytest.param(b"\xff\xfe", id="non-ascii"),
    pytest.param(b"-----BEGIN CERTIFICATE-----", id="half-pem"),
    pytest.param(b"-----BEGIN CERTIFICATE-----\n@@@@\n-----END CERTIFICATE-----", id="pem-junk"),
    pytest.param(
        b"garbage -----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----", id="pem-prefix"
    ),
    pytest.param(b"AAAA,BBBB", id="list-of-nonder"),
    pytest.param(b"=" * 50, id="padding"),
    pytest.param(b'"quoted"', id="quotes"),
]


@pytest.mark.parametrize("header_format", FORMATS)
@pytest.mark.parametrize("value", _JUNK)
def test_junk_raises_only_forwarded_cert_error(header_format: str, value: bytes) -> None:
    names = {
        "rfc9440": b"client-cert",
        "xfcc": b"x-forwarded-client-cert",
        "nginx": b"x-ssl-client-cert",
        "alb": b"x-amzn-mtls-clientcert",
        "traefik": b"x-forwarded-tls-client-cert",
    }
    with pytest.raises(ForwardedCertError) as info:
        parse_forwarded_cert(header_format, [(names[header_format], value)])
    assert info.value.status == 400
    assert info.value.reason == "cert-verify-failed"


@pytest.mark.parametrize("header_format", FORMATS)
def test_oversized_value_is_431_before_decoding(header_format: str, pki: ProxyPki) -> None:
    name = next(iter(encode(header_format, pki.clients["good"])))
    at_limit = [(name.lower().encode(), b"A" * MAX_CERT_HEADER_BYTES)]
    with pytest.raises(ForwardedCertError) as info:
        parse_forwarded_cert(header_format, at_limit)
    assert info.value.status == 400  # at the limit: parsed (and refused as junk)
    over = [(name.lower().encode(), b"A" * (MAX_CERT_HEADER_BYTES + 1))]
    with pytest.raises(ForwardedCertError) as info:
        parse_forwarded_cert(header_format, over)
    assert info.value.status == 431


@pytest.mark.parametrize("header_format", ["rfc9440", "xfcc", "alb", "traefik"])
def test_chain_length_is_bounded(header_format: str, pki: ProxyPki) -> None:
    chain = pki.clients["pin-on-intermediate"]
    ok = [chain[0]] + [chain[1]] * (MAX_CHAIN_CERTS - 1)
    assert parse_forwarded_cert(header_format, _lines(encode(header_format, ok))) is not None
    with pytest.raises(ForwardedCertError, match="more than"):
        parse_forwarded_cert(header_format, _lines(encode(header_format, [*ok, chain[1]])))


@pytest.mark.parametrize(
    "name",
    [
        "Client-Cert", "client_cert_chain", "X-Forwarded-Client-Cert", "x_forwarded_client_cert",
        "XFCC", "X-SSL-Client-Cert", "X-SSL-CERT", "X-SSL-Client-Verify", "x_ssl_client_verify",
        "SSL_CLIENT_VERIFY", "X-Client-Verify", "X-Amzn-Mtls-Clientcert-Leaf",
        "X-Forwarded-Tls-Client-Cert-Info", "Cf-Client-Cert-Sha256", "X-Client-Cert-Hash",
        "X-SSL-Client-S-DN", "X-Client-DN", "ssl-verified", "X-SSL-Client-Not-After",
        "x_tls_client_v_end",
    ],
)  # fmt: skip
def test_client_cert_header_names_are_recognised(name: str) -> None:
    assert is_client_cert_header(name)
    assert is_client_cert_header(name.encode())


@pytest.mark.parametrize(
    "name",
    ["Host", "Content-Type", "webhook-signature", "webhook-id", "X-Request-Id", "Authorization"],
)
def test_ordinary_headers_are_not(name: str) -> None:
    assert not is_client_cert_header(name)


@pytest.mark.parametrize("header_format", FORMATS)
def test_mutated_headers_never_raise_anything_else(header_format: str, pki: ProxyPki) -> None:
    # A seeded fuzz: random byte flips, cuts and insertions of a valid header value. Each
    # outcome is a certificate or a ForwardedCertError, never ValueError or binascii.Error.
    rng = random.Random(f"proxy-{header_format}")
    verifier = CertificateVerifier.from_files([pki.ca_file], pki.crl_files)
    lines = _lines(encode(header_format, pki.clients["pin-on-intermediate"]))
    alphabet = b':,;="%+/\\ -AZaz09\xff\x00'
    for _ in range(400):
        mutated = []
        for name, value in lines:
            data = bytearray(value)
            for _ in range(rng.randint(1, 4)):
                at = rng.randrange(len(data) + 1)
                action = rng.random()
                if action < 0.4 and data:
                    data[min(at, len(data) - 1)] = rng.choice(alphabet)
                elif action < 0.7:
                    data[at:at] = bytes([rng.choice(alphabet)])
                else:
                    del data[at : at + rng.randint(1, 40)]
            mutated.append((name, bytes(data)))
        with contextlib.suppress(ForwardedCertError):
            parsed = parse_forwarded_cert(header_format, mutated)
            if parsed is not None:  # still decodable: the verifier must refuse it cleanly
                verifier.verify(parsed.leaf_der, parsed.chain_der)
