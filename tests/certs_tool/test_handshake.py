"""Real stdlib handshakes on 127.0.0.1, CERT_REQUIRED on both sides, each with a failing twin."""

from __future__ import annotations

import datetime as dt
import functools
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from certs_tool import CA, CertsToolError, IssuedCert, KeyType, PrivateKey, generate_key

from .handshake import client_context, handshake, server_context

NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)


@functools.cache
def _key(kind: KeyType) -> PrivateKey:
    # RSA-4096 takes seconds to generate: once per worker is enough.
    return generate_key(kind)


@pytest.mark.parametrize("kind", list(KeyType), ids=[k.value for k in KeyType])
def test_handshake_passes_for_each_key_type(kind: KeyType) -> None:
    ca = CA(key=_key(kind))
    server = ca.issue_server("localhost", "127.0.0.1", "::1", key=_key(kind))
    client = ca.issue_client("billing", uris=["spiffe://example.org/billing"], key=_key(kind))
    outcome = handshake(server_context(ca, server), client_context(ca, client))
    assert outcome.ok, outcome


def test_handshake_passes_through_an_intermediate(certs_ca: CA) -> None:
    inter = certs_ca.create_intermediate(name="issuing CA")
    server = inter.issue_server("127.0.0.1")
    client = inter.issue_client("billing")
    outcome = handshake(
        server_context(certs_ca, server), client_context(certs_ca, client), "127.0.0.1"
    )
    assert outcome.ok, outcome


def test_handshake_passes_with_crl_loaded(certs_ca: CA, certs_server: IssuedCert) -> None:
    client = certs_ca.issue_client("still-good")
    outcome = handshake(
        server_context(certs_ca, certs_server, crl=True), client_context(certs_ca, client)
    )
    assert outcome.ok, outcome


_OTHER_CA = functools.cache(lambda: CA(name="some other CA"))

ClientFactory = Callable[[CA], IssuedCert]


@pytest.mark.parametrize(
    ("make_client", "reason"),
    [
        pytest.param(
            lambda ca: ca.issue_client("old", not_before=NOW - 10 * DAY, not_after=NOW - DAY),
            "certificate has expired",
            id="expired-client",
        ),
        pytest.param(
            lambda ca: ca.issue_client("early", not_before=NOW + DAY, not_after=NOW + 10 * DAY),
            "certificate is not yet valid",
            id="not-yet-valid-client",
        ),
        pytest.param(
            lambda ca: _OTHER_CA().issue_client("stranger"),
            "unable to get local issuer certificate",
            id="client-from-other-ca",
        ),
        pytest.param(
            lambda ca: ca.issue_client("server-only", eku=("server",)),
            "unsuitable certificate purpose",
            id="server-only-cert-as-client",
        ),
    ],
)
def test_server_rejects_bad_client(
    certs_ca: CA, certs_server: IssuedCert, make_client: ClientFactory, reason: str
) -> None:
    client = make_client(certs_ca)
    outcome = handshake(server_context(certs_ca, certs_server), client_context(certs_ca, client))
    assert not outcome.ok
    assert reason in str(outcome.server_error)


def test_server_rejects_revoked_client_with_crl_loaded(
    certs_ca: CA, certs_server: IssuedCert
) -> None:
    client = certs_ca.issue_client("fired")
    certs_ca.revoke(client)
    outcome = handshake(
        server_context(certs_ca, certs_server, crl=True), client_context(certs_ca, client)
    )
    assert not outcome.ok
    assert "certificate revoked" in str(outcome.server_error)


def test_server_rejects_missing_client_cert(certs_ca: CA, certs_server: IssuedCert) -> None:
    outcome = handshake(server_context(certs_ca, certs_server), client_context(certs_ca, None))
    assert not outcome.ok
    assert "peer did not return a certificate" in str(outcome.server_error)


@pytest.mark.parametrize(
    ("make_server", "reason"),
    [
        pytest.param(
            lambda ca: ca.issue_server("localhost", not_before=NOW - 9 * DAY, not_after=NOW - DAY),
            "certificate has expired",
            id="expired-server",
        ),
        pytest.param(
            lambda ca: _OTHER_CA().issue_server("localhost"),
            "unable to get local issuer certificate",
            id="server-from-other-ca",
        ),
        pytest.param(
            lambda ca: ca.issue_server("example.com"),
            "Hostname mismatch",
            id="server-wrong-host",
        ),
        pytest.param(
            lambda ca: ca.issue_client("client-only", dns=["localhost"]),
            "unsuitable certificate purpose",
            id="client-only-cert-as-server",
        ),
    ],
)
def test_client_rejects_bad_server(
    certs_ca: CA, certs_client: IssuedCert, make_server: ClientFactory, reason: str
) -> None:
    server = make_server(certs_ca)
    outcome = handshake(server_context(certs_ca, server), client_context(certs_ca, certs_client))
    assert not outcome.ok
    assert reason in str(outcome.client_error)


def test_wrong_passphrase_fails_to_load(certs_client: IssuedCert, tmp_path: Path) -> None:
    cert_file = certs_client.chain_pem.write_to_path(tmp_path / "client.pem")
    key_file = certs_client.private_key_pem(b"right").write_to_path(tmp_path / "client-key.pem")
    with pytest.raises(CertsToolError, match="wrong passphrase"):
        IssuedCert.from_files(cert_file, key_file, b"wrong")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with pytest.raises(ssl.SSLError):
        ctx.load_cert_chain(cert_file, key_file, password=b"wrong")
    loaded = IssuedCert.from_files(cert_file, key_file, b"right")
    assert loaded.spki_pin == certs_client.spki_pin
