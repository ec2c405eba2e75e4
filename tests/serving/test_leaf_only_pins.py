"""Pins match the verified leaf only, never a certificate the client merely sent along.

OkHttp's CVE-2016-2402: pins were checked against the chain the peer *sent*, so an
attacker with any CA-valid certificate appended a copy of the pinned certificate (no key
needed) and passed. Here the client presents an unpinned but CA-valid leaf, with its own
key, followed by the pinned certificate. OpenSSL verifies leaf -> CA and ignores the extra
certificate; the pin check must see that leaf, in the handshake and on a pinned route.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from quart import Quart, request

from mtls_hooks.core._errors import PinError
from mtls_hooks.core._identity import PeerIdentity
from mtls_hooks.core._policy import PeerPolicy
from mtls_hooks.core._tls import create_client_context, create_server_context
from mtls_hooks.receiver._authz import current_peer, require_peer
from mtls_hooks.testing import running_server
from tests.serving.apps import app
from tests.serving.conftest import Identity, LogCollector, Pki


@dataclass(frozen=True)
class Padded:
    """A PKI with a pinned identity and an unpinned one, and chain files of both kinds."""

    pki: Pki
    pinned: Identity
    unpinned: Identity

    def chain(self, leaf: Identity, extra: Identity) -> str:
        """``leaf``'s certificate followed by ``extra``'s, as one PEM chain file."""
        path = self.pki.directory / f"{leaf.name}+{extra.name}.pem"
        path.write_bytes(Path(leaf.cert).read_bytes() + Path(extra.cert).read_bytes())
        return str(path)

    def client(self, leaf: Identity, extra: Identity | None = None) -> httpx.Client:
        certfile = leaf.cert if extra is None else self.chain(leaf, extra)
        context = create_client_context(
            ca_file=self.pki.ca_file, certfile=certfile, keyfile=leaf.key
        )
        return httpx.Client(verify=context, timeout=10.0)


@pytest.fixture(scope="module")
def padded(tmp_path_factory: pytest.TempPathFactory) -> Padded:
    pki = Pki.create(tmp_path_factory.mktemp("padded"))
    return Padded(pki, pki.identity("pinned"), pki.identity("unpinned"))


@pytest.fixture(scope="module")
def pinned_server(padded: Padded) -> Iterator[str]:
    """Handshake pins: only ``pinned``'s key."""
    with running_server(app, padded.pki.config(padded.pinned)) as server:
        yield server.url("/whoami")


def test_extra_pinned_certificate_beside_an_unpinned_leaf_is_refused(
    padded: Padded, pinned_server: str
) -> None:
    with (
        LogCollector("mtls_hooks.tls", wake_on="event=handshake_refused") as log,
        padded.client(padded.unpinned, extra=padded.pinned) as client,
        pytest.raises(httpx.TransportError),  # no HTTP answer at all
    ):
        client.get(pinned_server)
    assert log.matched.wait(10.0)
    [line] = [line for line in log.lines if "event=handshake_refused" in line]
    # The refusal names the leaf that verified, not the certificate that rode along.
    assert " reason=unpinned " in line
    assert 'subject="CN=unpinned"' in line
    assert f" spki={padded.unpinned.spki_pin} " in line


@pytest.mark.parametrize(
    "extra",
    [pytest.param(False, id="leaf-alone"), pytest.param(True, id="leaf-padded-with-unpinned")],
)
def test_pinned_leaf_is_served_with_or_without_padding(
    padded: Padded, pinned_server: str, extra: bool
) -> None:
    with padded.client(padded.pinned, padded.unpinned if extra else None) as client:
        body = client.get(pinned_server).json()
    assert body["subject"] == "CN=pinned"
    assert body["spki"] == padded.pinned.spki_pin
    # The verified chain (leaf, CA) reaches the app; the certificate sent along does not.
    assert body["chain_len"] == 2


# --------------------------------------------------------------------------- route pins


@pytest.fixture(scope="module")
def route_server(padded: Padded) -> Iterator[str]:
    """Any CA-verified client in the handshake; the route pins ``pinned``."""
    route_app = Quart(__name__)

    @route_app.get("/pinned")
    @require_peer(pins=[padded.pinned.spki_pin])
    async def pinned_route() -> dict[str, Any]:
        return {"subject": current_peer().subject}

    @route_app.get("/chain")
    async def chain() -> dict[str, Any]:
        pems = request.scope["extensions"]["tls"]["client_cert_chain"]
        return {
            "subjects": [PeerIdentity.from_der(ssl.PEM_cert_to_DER_cert(p)).subject for p in pems]
        }

    with running_server(route_app, padded.pki.config(allow_any_client=True)) as server:
        yield server.url("/pinned")


def test_route_pin_ignores_a_padded_pinned_certificate(padded: Padded, route_server: str) -> None:
    with padded.client(padded.unpinned, extra=padded.pinned) as client:
        response = client.get(route_server)
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"


def test_route_pin_admits_the_pinned_leaf(padded: Padded, route_server: str) -> None:
    with padded.client(padded.pinned) as client:
        response = client.get(route_server)
    assert response.status_code == 200
    assert response.json() == {"subject": "CN=pinned"}


def test_app_sees_the_verified_chain_not_the_sent_one(padded: Padded, route_server: str) -> None:
    with padded.client(padded.unpinned, extra=padded.pinned) as client:
        subjects = client.get(route_server.replace("/pinned", "/chain")).json()["subjects"]
    ca_subject = padded.pki.ca.certificate.subject.rfc4514_string()
    assert subjects == ["CN=unpinned", ca_subject]


# --------------------------------------------------------------------------- sender side


@pytest.mark.parametrize(
    ("pin_padding", "refused"),
    [
        pytest.param(True, True, id="receiver-padded-with-the-pinned-certificate"),
        pytest.param(False, False, id="receiver-leaf-pinned"),
    ],
)
def test_sender_pins_the_receivers_verified_leaf(
    padded: Padded, pin_padding: bool, refused: bool
) -> None:
    """The same attack against a sender: a receiver's chain padded with the pinned cert."""
    pki = padded.pki
    decoy = pki.ca.issue_server("localhost", "127.0.0.1")
    chain = pki.directory / "receiver-padded.pem"
    chain.write_bytes(pki.server.cert_pem.bytes() + decoy.cert_pem.bytes())
    server_context = create_server_context(
        certfile=chain,
        keyfile=pki.server_key,
        client_ca=[pki.ca_file],
        peer_policy=PeerPolicy(allow_any=True),
    )
    pin = decoy.spki_pin if pin_padding else pki.server.spki_pin
    client_context = create_client_context(
        ca_file=pki.ca_file,
        certfile=padded.pinned.cert,
        keyfile=padded.pinned.key,
        server_policy=PeerPolicy.from_rules([pin]),
    )
    server_raw, client_raw = socket.socketpair()
    with server_raw, client_raw:
        server_raw.settimeout(10.0)
        client_raw.settimeout(10.0)

        def serve() -> None:
            # The server's own view of a refused handshake is not the point here.
            with (
                contextlib.suppress(ssl.SSLError, OSError),
                server_context.wrap_socket(server_raw, server_side=True) as tls,
            ):
                tls.sendall(b"hello")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            if refused:
                with pytest.raises(PinError) as caught:
                    client_context.wrap_socket(client_raw, server_hostname="localhost")
                assert caught.value.spki_pin == pki.server.spki_pin  # the leaf, named
            else:
                with client_context.wrap_socket(client_raw, server_hostname="localhost") as tls:
                    assert tls.recv(5) == b"hello"
        finally:
            client_raw.close()
            thread.join(10.0)
