"""A SPIFFE prefix rule never matches a certificate with two URI SANs (X509-SVID §2).

An X509-SVID carries exactly one URI SAN. A CA-valid certificate with two (both under the
allowed prefix, or one SPIFFE ID beside an https URI) is not an SVID, so
``uri:spiffe://td/billing/*`` must not admit it, in the handshake or on a route. certs_tool
refuses to issue such a certificate, so it is built here with the CA's key directly, as a
careless or hostile issuer would.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from quart import Quart

from certs_tool import IssuedCert
from certs_tool._build import build_leaf_cert
from certs_tool._keys import KeyType, generate_key
from mtls_hooks import PeerIdentity
from mtls_hooks.receiver._authz import current_peer, require_peer
from mtls_hooks.testing import running_server
from tests.serving.apps import app as whoami_app
from tests.serving.conftest import Identity, LogCollector, Pki

PREFIX_RULE = "uri:spiffe://td.example/billing/*"
BILLING_API = "spiffe://td.example/billing/api"


@dataclass(frozen=True)
class Peers:
    pki: Pki
    svid: Identity  # exactly one URI SAN, under the prefix: admitted
    two_spiffe: Identity  # two SPIFFE IDs, both under the prefix
    spiffe_and_https: Identity  # a SPIFFE ID under the prefix and an https URI


def _unchecked(pki: Pki, name: str, uris: list[str]) -> Identity:
    """A CA-signed client certificate with exactly these URI SANs, unchecked."""
    key = generate_key(KeyType.EC_P256)
    now = dt.datetime.now(dt.UTC)
    cert = build_leaf_cert(
        public_key=key.public_key(),
        subject=x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)]),
        sans=[x509.UniformResourceIdentifier(uri) for uri in uris],
        ekus=[ExtendedKeyUsageOID.CLIENT_AUTH],
        issuer=pki.ca.certificate,
        signing_key=pki.ca.private_key,
        window=(now - dt.timedelta(minutes=5), now + dt.timedelta(days=1)),
    )
    assert PeerIdentity.from_certificate(cert).uris == tuple(uris)
    return pki.identity(name, IssuedCert(cert, key, pki.ca.issuing_chain))


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Peers:
    pki = Pki.create(tmp_path_factory.mktemp("spiffe"))
    return Peers(
        pki,
        svid=_unchecked(pki, "svid", [BILLING_API]),
        two_spiffe=_unchecked(
            pki, "two-spiffe", [BILLING_API, "spiffe://td.example/billing/batch"]
        ),
        spiffe_and_https=_unchecked(
            pki, "spiffe-and-https", [BILLING_API, "https://billing.td.example/"]
        ),
    )


NOT_SVIDS = [
    pytest.param("two_spiffe", id="two-spiffe-ids"),
    pytest.param("spiffe_and_https", id="spiffe-id-and-https-uri"),
]


# --------------------------------------------------------------------------- handshake


@pytest.fixture(scope="module")
def handshake_server(peers: Peers) -> Iterator[str]:
    with running_server(whoami_app, peers.pki.config(allow=(PREFIX_RULE,))) as server:
        yield server.url("/whoami")


def test_handshake_admits_an_svid_under_the_prefix(peers: Peers, handshake_server: str) -> None:
    with httpx.Client(verify=peers.pki.context(peers.svid), timeout=10.0) as client:
        assert client.get(handshake_server).json()["subject"] == "CN=svid"


@pytest.mark.parametrize("who", NOT_SVIDS)
def test_handshake_refuses_two_uri_sans(peers: Peers, handshake_server: str, who: str) -> None:
    identity: Identity = getattr(peers, who)
    with (
        LogCollector("mtls_hooks.tls", wake_on="event=handshake_refused") as log,
        httpx.Client(verify=peers.pki.context(identity), timeout=10.0) as client,
        pytest.raises(httpx.TransportError),
    ):
        client.get(handshake_server)
    assert log.matched.wait(10.0)
    [line] = [line for line in log.lines if "event=handshake_refused" in line]
    assert " reason=unpinned " in line
    assert f" spki={identity.spki_pin} " in line


# --------------------------------------------------------------------------- route


@pytest.fixture(scope="module")
def route_server(peers: Peers) -> Iterator[str]:
    app = Quart(__name__)

    @app.get("/billing")
    @require_peer(allow=[PREFIX_RULE])
    async def billing() -> dict[str, Any]:
        return {"subject": current_peer().subject}

    with running_server(app, peers.pki.config(allow_any_client=True)) as server:
        yield server.url("/billing")


def test_route_admits_an_svid_under_the_prefix(peers: Peers, route_server: str) -> None:
    with httpx.Client(verify=peers.pki.context(peers.svid), timeout=10.0) as client:
        response = client.get(route_server)
    assert response.status_code == 200
    assert response.json() == {"subject": "CN=svid"}


@pytest.mark.parametrize("who", NOT_SVIDS)
def test_route_refuses_two_uri_sans(peers: Peers, route_server: str, who: str) -> None:
    identity: Identity = getattr(peers, who)
    with httpx.Client(verify=peers.pki.context(identity), timeout=10.0) as client:
        response = client.get(route_server)
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
