"""Each TLS hardening setting of ``core/_tls.py`` has a test that fails without it.

Against a real running server (Hypercorn on 127.0.0.1) with real client handshakes:

* only AEAD suites under TLS 1.2: a client offering only CBC suites is refused;
* the protocol floor itself refuses TLS 1.1, even to a client whose cipher list would
  match anything (``ALL:@SECLEVEL=0``): the server's verdict is "unsupported protocol",
  not "no shared cipher";
* no session tickets, TLS 1.2 or 1.3: a client holds no ticket after a full exchange
  (and a twin proves the same probe sees the tickets of a stdlib context);
* ``CERT_REQUIRED``: OpenSSL itself fails the handshake of a client without a
  certificate, before our post-handshake check could (``CERT_OPTIONAL`` would leave the
  refusal to that check);
* no renegotiation on the server and the sender contexts (Python cannot start one, and
  OpenSSL 3 servers refuse client-initiated renegotiation by default, so ``openssl s_client``'s
  ``R`` cannot tell; the flag is read from the contexts actually in use);
* the sender's context, against stdlib receivers offering only CBC suites or only TLS 1.1,
  refuses both (and completes with an AEAD TLS 1.2 receiver).

Server-side verdicts are read from the ``mtls_hooks.tls`` refusal line: refused TLS clients
only see the connection end, so the client side asserts that no HTTP byte came back.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from mtls_hooks.core._errors import PinError
from mtls_hooks.core._tls import HandshakeRefusal, create_client_context
from mtls_hooks.sender._sync import WebhookSender
from mtls_hooks.testing import ServerHandle, running_server
from tests.serving.apps import app
from tests.serving.conftest import Identity, LogCollector, Pki

REQUEST = b"GET /whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
# Every TLS 1.2 CBC suite with ECDHE (the server key is ECDSA P-256; RSA ones for
# completeness): the strongest non-AEAD offer a modern client could make.
CBC_SUITES = ":".join(
    f"ECDHE-{sig}-AES{bits}-{mac}"
    for sig in ("ECDSA", "RSA")
    for bits, mac in (("128", "SHA"), ("256", "SHA"), ("128", "SHA256"), ("256", "SHA384"))
)
AEAD_SUITE = "ECDHE-ECDSA-AES128-GCM-SHA256"


@pytest.fixture(scope="module")
def hardened(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerHandle, Pki, Identity]]:
    """A server with one pinned client, on a PKI of its own."""
    pki = Pki.create(tmp_path_factory.mktemp("hardening"))
    alpha = pki.identity("alpha")
    with running_server(app, pki.config(alpha)) as server:
        yield server, pki, alpha


def _client(
    pki: Pki,
    identity: Identity | None,
    *,
    ciphers: str | None = None,
    version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A stdlib client context (not ours: it may offer what our contexts never would)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(pki.ca_file)
    if identity is not None:
        context.load_cert_chain(identity.cert, identity.key)
    if ciphers is not None:
        context.set_ciphers(ciphers)
    if version is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1, on purpose
            context.minimum_version = version
            context.maximum_version = version
    return context


@dataclass(frozen=True)
class Exchange:
    answer: bytes
    cipher: str
    session: ssl.SSLSession | None


def _exchange(server: ServerHandle, context: ssl.SSLContext) -> Exchange:
    """One request on a new connection, read to the end (the server closes it)."""
    raw = socket.create_connection((server.host, server.port), timeout=10.0)
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(REQUEST)
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
        cipher = tls.cipher()
        assert cipher is not None
        return Exchange(answer, cipher[0], tls.session)


def _refused(server: ServerHandle, context: ssl.SSLContext) -> str:
    """Connect with ``context``; assert the handshake failed; return the server's one line."""
    with LogCollector("mtls_hooks.tls", wake_on="event=handshake_refused") as log:
        # The client's handshake fails: an alert, or the connection ending under it.
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            _exchange(server, context)
        assert log.matched.wait(10.0), "the server logged no refusal"
    [line] = [line for line in log.lines if "event=handshake_refused" in line]
    return line


# --------------------------------------------------------------------------- ciphers


def test_tls12_client_offering_only_cbc_suites_is_refused(
    hardened: tuple[ServerHandle, Pki, Identity],
) -> None:
    server, pki, alpha = hardened
    context = _client(pki, alpha, ciphers=CBC_SUITES, version=ssl.TLSVersion.TLSv1_2)
    offered = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert offered, "the client offers no TLS 1.2 suite at all"
    assert not any(c["aead"] for c in offered), "the failing client must offer CBC only"
    line = _refused(server, context)
    assert " reason=handshake-failed " in line
    assert "no shared cipher" in line, line


def test_tls12_client_offering_an_aead_suite_is_served(
    hardened: tuple[ServerHandle, Pki, Identity],
) -> None:
    server, pki, alpha = hardened
    context = _client(pki, alpha, ciphers=AEAD_SUITE, version=ssl.TLSVersion.TLSv1_2)
    exchange = _exchange(server, context)
    assert exchange.answer.startswith(b"HTTP/1.1 200")
    assert exchange.cipher == AEAD_SUITE


@pytest.mark.parametrize("side", ["server", "client"])
def test_every_tls12_suite_our_contexts_offer_is_aead(pki: Pki, side: str) -> None:
    config = pki.config(allow_any_client=True)
    context = (
        config.server_context(on_refusal=None)
        if side == "server"
        else create_client_context(ca_file=pki.ca_file)
    )
    tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    assert [c["name"] for c in tls12 if not c["aead"]] == []
    assert {c["kea"] for c in tls12} == {"kx-ecdhe"}  # forward secrecy only


# --------------------------------------------------------------------------- protocol floor


def test_tls11_is_refused_by_the_protocol_floor_not_the_cipher_list(
    hardened: tuple[ServerHandle, Pki, Identity],
) -> None:
    server, pki, alpha = hardened
    # A client that would take any suite at all, so only the version can stop it.
    context = _client(pki, alpha, ciphers="ALL:@SECLEVEL=0", version=ssl.TLSVersion.TLSv1_1)
    line = _refused(server, context)
    assert " reason=handshake-failed " in line
    # OpenSSL's version check (SSL_R_UNSUPPORTED_PROTOCOL); without the floor the same
    # client is refused later, by the cipher list ("no shared cipher").
    assert "unsupported protocol" in line, line
    assert "cipher" not in line, line


@pytest.mark.parametrize("side", ["server", "client"])
def test_both_contexts_have_the_tls12_floor(pki: Pki, side: str) -> None:
    config = pki.config(allow_any_client=True)
    context = (
        config.server_context(on_refusal=None)
        if side == "server"
        else create_client_context(ca_file=pki.ca_file)
    )
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


# --------------------------------------------------------------------------- session tickets


@pytest.mark.parametrize(
    "version",
    [
        pytest.param(ssl.TLSVersion.TLSv1_3, id="tls1.3"),
        pytest.param(ssl.TLSVersion.TLSv1_2, id="tls1.2"),
    ],
)
def test_client_receives_no_session_ticket(
    hardened: tuple[ServerHandle, Pki, Identity], version: ssl.TLSVersion
) -> None:
    server, pki, alpha = hardened
    # The whole answer was read: a TLS 1.3 NewSessionTicket, sent after the handshake,
    # would have been processed before the server's close_notify.
    exchange = _exchange(server, _client(pki, alpha, version=version))
    assert exchange.answer.startswith(b"HTTP/1.1 200")
    assert exchange.session is not None
    assert not exchange.session.has_ticket, "the server issued a session ticket"


def test_the_ticket_probe_sees_tickets_from_a_stdlib_server(pki: Pki) -> None:
    """Failing twin of the probe: a stdlib server context does send TLS 1.3 tickets."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(pki.server_cert, pki.server_key)
    assert server_context.num_tickets > 0
    client_context = _client(pki, None, version=ssl.TLSVersion.TLSv1_3)
    server_raw, client_raw = socket.socketpair()
    with server_raw, client_raw:
        server_raw.settimeout(10.0)
        client_raw.settimeout(10.0)

        def serve() -> None:
            with server_context.wrap_socket(server_raw, server_side=True) as tls:
                tls.sendall(b"hello")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with client_context.wrap_socket(client_raw, server_hostname="localhost") as tls:
            assert tls.recv(5) == b"hello"
            session = tls.session
        thread.join(10.0)
    assert session is not None
    assert session.has_ticket


# --------------------------------------------------------------------------- CERT_REQUIRED


def test_served_contexts_require_a_client_certificate(
    hardened: tuple[ServerHandle, Pki, Identity],
) -> None:
    server, _, _ = hardened
    assert server.material.listening_context.verify_mode == ssl.CERT_REQUIRED
    assert server.material.current.context.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    "version",
    [
        pytest.param(ssl.TLSVersion.TLSv1_3, id="tls1.3"),
        pytest.param(ssl.TLSVersion.TLSv1_2, id="tls1.2"),
    ],
)
def test_openssl_itself_refuses_a_client_without_certificate(
    pki: Pki, version: ssl.TLSVersion
) -> None:
    """The handshake fails inside OpenSSL, not in our post-handshake check.

    With ``CERT_OPTIONAL`` OpenSSL would complete the handshake and only our check would
    refuse (a ``PinError``): one guard instead of two, and a refusal the TLS stack never
    reported as such.
    """
    refusals: list[HandshakeRefusal] = []
    config = pki.config(allow_any_client=True)
    server_context = config.server_context(on_refusal=lambda _c, r: refusals.append(r))
    client_context = _client(pki, None, version=version)
    server_raw, client_raw = socket.socketpair()
    outcome: list[BaseException | None] = []
    with server_raw, client_raw:
        server_raw.settimeout(10.0)
        client_raw.settimeout(10.0)

        def client() -> None:
            try:
                with client_context.wrap_socket(client_raw, server_hostname="localhost") as c:
                    c.sendall(REQUEST)
                    c.recv(100)
            except (ssl.SSLError, OSError) as exc:
                outcome.append(exc)
            else:
                outcome.append(None)

        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        with pytest.raises(ssl.SSLError) as caught:
            server_context.wrap_socket(server_raw, server_side=True)
        thread.join(10.0)
    assert not isinstance(caught.value, PinError), "refused after the handshake, not in it"
    assert caught.value.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    assert [r.reason for r in refusals] == ["no-certificate"]
    assert len(outcome) == 1, "the client thread did not finish"
    assert isinstance(outcome[0], ssl.SSLError | ConnectionError), outcome


# --------------------------------------------------------------------------- renegotiation


def test_renegotiation_is_off_on_the_served_context(
    hardened: tuple[ServerHandle, Pki, Identity],
) -> None:
    server, _, _ = hardened
    # Renegotiation could swap the peer certificate after the pin check; Python cannot
    # start one, so the option is read from the contexts handshakes actually use.
    for context in (server.material.listening_context, server.material.current.context):
        assert context.options & ssl.OP_NO_RENEGOTIATION == ssl.OP_NO_RENEGOTIATION


def test_renegotiation_is_off_on_the_sender_context(pki: Pki) -> None:
    client = create_client_context(ca_file=pki.ca_file)
    assert client.options & ssl.OP_NO_RENEGOTIATION == ssl.OP_NO_RENEGOTIATION
    with WebhookSender(
        signing_keys="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", ca_file=pki.ca_file
    ) as sender:
        context = sender._ssl_context
        assert isinstance(context, ssl.SSLContext)
        assert context.options & ssl.OP_NO_RENEGOTIATION == ssl.OP_NO_RENEGOTIATION
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2


# --------------------------------------------------------------------------- sender side


def _client_handshake(pki: Pki, server_context: ssl.SSLContext) -> ssl.SSLError | None:
    """Our client context against ``server_context`` over a socket pair; the client's error."""
    client_context = create_client_context(ca_file=pki.ca_file)
    server_raw, client_raw = socket.socketpair()
    with server_raw, client_raw:
        server_raw.settimeout(10.0)
        client_raw.settimeout(10.0)

        def serve() -> None:
            with contextlib.suppress(ssl.SSLError, OSError):  # its own failure is not the point
                server_context.wrap_socket(server_raw, server_side=True).close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            client_context.wrap_socket(client_raw, server_hostname="localhost").close()
        except ssl.SSLError as exc:
            return exc
        finally:
            client_raw.close()
            thread.join(10.0)
    return None


def _stdlib_server(pki: Pki, *, ciphers: str, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.set_ciphers(ciphers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1, on purpose
        context.minimum_version = version
        context.maximum_version = version
    return context


@pytest.mark.parametrize(
    ("ciphers", "version", "alert"),
    [
        pytest.param(CBC_SUITES, ssl.TLSVersion.TLSv1_2, "HANDSHAKE_FAILURE", id="cbc-only"),
        pytest.param(
            "ALL:@SECLEVEL=0", ssl.TLSVersion.TLSv1_1, "PROTOCOL_VERSION", id="tls1.1-only"
        ),
    ],
)
def test_sender_context_refuses_a_weak_receiver(
    pki: Pki, ciphers: str, version: ssl.TLSVersion, alert: str
) -> None:
    error = _client_handshake(pki, _stdlib_server(pki, ciphers=ciphers, version=version))
    assert error is not None, "our client completed a handshake it should refuse"
    # The server's alert: it found nothing acceptable in what our client offered.
    assert error.reason is not None
    assert alert in error.reason, error


def test_sender_context_accepts_an_aead_tls12_receiver(pki: Pki) -> None:
    """The twin: the same stdlib server with one AEAD suite is fine."""
    server = _stdlib_server(pki, ciphers=AEAD_SUITE, version=ssl.TLSVersion.TLSv1_2)
    assert _client_handshake(pki, server) is None
