"""The pin check runs however the handshake completes: explicitly, or inside read/write.

OpenSSL finishes a pending handshake inside ``SSL_read``/``SSL_write``. Without a guard on
``read``/``write``/``send``, ``wrap_socket(..., do_handshake_on_connect=False)`` followed by
``recv()``, or ``SSLObject.read()`` before ``do_handshake()``, exchanged data with an
unpinned peer. Both connection classes are tested, on the server and the client side, each
with its pinned twin.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from certs_tool import CA
from mtls_hooks import PeerPolicy, PinError, create_client_context, create_server_context
from mtls_hooks.core._tls import HandshakeRefusal, PinningContext

SECRET = b"application data"


@dataclass(frozen=True)
class Files:
    ca: str
    server_cert: str
    server_key: str
    server_pin: str
    good_cert: str
    good_key: str
    good_pin: str
    bad_cert: str
    bad_key: str


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, certs_ca: CA) -> Files:
    directory: Path = tmp_path_factory.mktemp("tls-hooks")
    server = certs_ca.issue_server("localhost")
    good = certs_ca.issue_client("good")
    bad = certs_ca.issue_client("bad")
    certs_ca.cert_pem.write_to_path(directory / "ca.pem")
    for name, issued in (("server", server), ("good", good), ("bad", bad)):
        issued.cert_pem.write_to_path(directory / f"{name}.pem")
        issued.private_key_pem().write_to_path(directory / f"{name}.key")
    d = str(directory)
    return Files(
        f"{d}/ca.pem",
        f"{d}/server.pem",
        f"{d}/server.key",
        server.spki_pin,
        f"{d}/good.pem",
        f"{d}/good.key",
        good.spki_pin,
        f"{d}/bad.pem",
        f"{d}/bad.key",
    )


def _server_context(files: Files, refusals: list[HandshakeRefusal]) -> PinningContext:
    return create_server_context(
        certfile=files.server_cert,
        keyfile=files.server_key,
        client_ca=[files.ca],
        peer_policy=PeerPolicy.from_rules([files.good_pin]),
        on_refusal=lambda _conn, refusal: refusals.append(refusal),
    )


def _client_context(files: Files, *, pinned: bool, server_pin: str | None = None) -> ssl.SSLContext:
    name = "good" if pinned else "bad"
    context = create_client_context(
        ca_file=files.ca,
        certfile=getattr(files, f"{name}_cert"),
        keyfile=getattr(files, f"{name}_key"),
        server_policy=PeerPolicy.from_rules([server_pin]) if server_pin else None,
    )
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    return context


# --------------------------------------------------------------------------- SSLSocket


def _in_thread(target: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(target())
        except (ssl.SSLError, OSError) as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def _assert_cut_off(outcome: list[object], message: str) -> None:
    """The peer's thread ended with no application data: a TLS error, a reset or an EOF."""
    assert len(outcome) == 1, "the peer thread did not finish"
    [result] = outcome
    assert result == b"" or isinstance(result, ssl.SSLError | ConnectionError), (message, result)


SERVER_IO: dict[str, Callable[[ssl.SSLSocket], object]] = {
    "recv": lambda tls: tls.recv(100),
    "recv_into": lambda tls: bytes(bytearray(100)[: tls.recv_into(bytearray(100))]),
    "read": lambda tls: tls.read(100),
    "sendall": lambda tls: tls.sendall(SECRET),
    "send": lambda tls: tls.send(SECRET),
    "write": lambda tls: tls.write(SECRET),
}


@pytest.mark.parametrize("io", list(SERVER_IO))
@pytest.mark.parametrize(
    "pinned",
    [pytest.param(True, id="pinned-client"), pytest.param(False, id="unpinned-client")],
)
def test_socket_server_implicit_handshake(files: Files, io: str, pinned: bool) -> None:
    refusals: list[HandshakeRefusal] = []
    server_context = _server_context(files, refusals)
    client_context = _client_context(files, pinned=pinned)
    server_raw, client_raw = socket.socketpair()
    with server_raw, client_raw:
        server_raw.settimeout(10.0)
        client_raw.settimeout(10.0)
        tls = server_context.wrap_socket(
            server_raw, server_side=True, do_handshake_on_connect=False
        )

        def client() -> bytes:
            with client_context.wrap_socket(client_raw, server_hostname="localhost") as c:
                c.sendall(SECRET)
                return c.recv(100)

        thread, client_outcome = _in_thread(client)
        try:
            if pinned:
                SERVER_IO[io](tls)
                if io in ("recv", "recv_into", "read"):
                    tls.sendall(b"ok")
                else:
                    assert tls.recv(100) == SECRET
            else:
                with pytest.raises(PinError):
                    SERVER_IO[io](tls)
                # Remembered: a second call fails the same way, and is not logged twice.
                with pytest.raises(PinError):
                    tls.recv(100)
        finally:
            tls.close()
            thread.join(10.0)
    if pinned:
        assert client_outcome
        assert client_outcome[0] in (b"ok", SECRET)
        assert refusals == []
    else:
        _assert_cut_off(client_outcome, "the unpinned client got data")
        assert [r.reason for r in refusals] == ["unpinned"]


@pytest.mark.parametrize("io", ["sendall", "recv"])
@pytest.mark.parametrize(
    "server_pinned",
    [pytest.param(True, id="pinned-server"), pytest.param(False, id="unpinned-server")],
)
def test_socket_client_implicit_handshake(files: Files, io: str, server_pinned: bool) -> None:
    refusals: list[HandshakeRefusal] = []
    server_context = _server_context(files, refusals)
    wrong_pin = files.good_pin  # a client pin, never the server's
    client_context = _client_context(
        files, pinned=True, server_pin=files.server_pin if server_pinned else wrong_pin
    )
    server_raw, client_raw = socket.socketpair()
    with server_raw, client_raw:
        server_raw.settimeout(10.0)
        client_raw.settimeout(10.0)

        def server() -> bytes:
            with server_context.wrap_socket(server_raw, server_side=True) as s:
                s.sendall(b"ok")
                return s.recv(100)

        thread, server_outcome = _in_thread(server)
        tls = client_context.wrap_socket(
            client_raw, server_hostname="localhost", do_handshake_on_connect=False
        )
        try:
            action = (lambda: tls.sendall(SECRET)) if io == "sendall" else (lambda: tls.recv(100))
            if server_pinned:
                action()
                if io == "recv":
                    tls.sendall(SECRET)
                else:
                    assert tls.recv(100) == b"ok"
            else:
                with pytest.raises(PinError):
                    action()
        finally:
            tls.close()
            thread.join(10.0)
    if server_pinned:
        assert server_outcome == [SECRET]
    else:
        _assert_cut_off(server_outcome, "the client sent data to an unpinned server")


# --------------------------------------------------------------------------- SSLObject


def _pump(source: ssl.MemoryBIO, sink: ssl.MemoryBIO) -> None:
    data = source.read()
    if data:
        sink.write(data)


@dataclass
class Pair:
    server: ssl.SSLObject
    client: ssl.SSLObject
    server_in: ssl.MemoryBIO
    server_out: ssl.MemoryBIO
    client_in: ssl.MemoryBIO
    client_out: ssl.MemoryBIO

    def pump(self) -> None:
        _pump(self.client_out, self.server_in)
        _pump(self.server_out, self.client_in)


def _pair(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> Pair:
    bios = [ssl.MemoryBIO() for _ in range(4)]
    server = server_context.wrap_bio(bios[0], bios[1], server_side=True)
    client = client_context.wrap_bio(bios[2], bios[3], server_hostname="localhost")
    return Pair(server, client, *bios)


def _attempt(call: Callable[[], object]) -> object:
    try:
        return call()
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return None


@pytest.mark.parametrize(
    "pinned",
    [pytest.param(True, id="pinned-client"), pytest.param(False, id="unpinned-client")],
)
def test_object_server_read_before_handshake(files: Files, pinned: bool) -> None:
    refusals: list[HandshakeRefusal] = []
    pair = _pair(_server_context(files, refusals), _client_context(files, pinned=pinned))
    received: list[object] = []
    client_wrote = False
    for _ in range(20):
        if pair.client.version() is None:
            _attempt(pair.client.do_handshake)
        elif not client_wrote:
            pair.client.write(SECRET)
            client_wrote = True
        pair.pump()
        try:
            data = _attempt(lambda: pair.server.read(100))
        except PinError:
            assert not pinned
            break
        if data:
            assert pinned, "read() returned data from an unpinned client"
            received.append(data)
            break
        pair.pump()
    else:
        pytest.fail("the handshake neither completed nor failed")
    if pinned:
        assert received[0] == SECRET
        assert refusals == []
    else:
        assert [r.reason for r in refusals] == ["unpinned"]
        with pytest.raises(PinError):
            pair.server.read(100)
        assert len(refusals) == 1


@pytest.mark.parametrize(
    "server_pinned",
    [pytest.param(True, id="pinned-server"), pytest.param(False, id="unpinned-server")],
)
def test_object_client_write_before_handshake(files: Files, server_pinned: bool) -> None:
    refusals: list[HandshakeRefusal] = []
    client_context = _client_context(
        files, pinned=True, server_pin=files.server_pin if server_pinned else files.good_pin
    )
    pair = _pair(_server_context(files, refusals), client_context)
    written = None
    for _ in range(20):
        if server_pinned:
            written = _attempt(lambda: pair.client.write(SECRET))
            if written:
                break
        else:
            try:
                assert not _attempt(lambda: pair.client.write(SECRET))
            except PinError:
                break
        pair.pump()
        _attempt(pair.server.do_handshake)
        pair.pump()
    else:
        pytest.fail("the handshake neither completed nor failed")
    pair.pump()
    delivered = _attempt(lambda: pair.server.read(100))
    if server_pinned:
        assert written == len(SECRET)
        assert delivered == SECRET
    else:
        assert not delivered, "write() sent data to an unpinned server"
