"""Keep-alive on real mTLS connections: what closes one, and how the close is announced.

A refusal sent before the body was read announces the close (RFC 9112 §9.6): Hypercorn closes
an HTTP/1.1 connection whose request body is still unread once the answer is out. Without
``Connection: close`` a pooling sender would send its next webhook into the closing socket
and see a dropped connection instead of the 403 it deserved.

The server's ``keep_alive_max_requests`` and ``keep_alive_timeout_s`` take effect: two servers
that differ only in them are each other's failing twin.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
import h11
import pytest
from quart import Quart

from certs_tool import CA
from mtls_hooks.receiver._receiver import WebhookReceiver
from mtls_hooks.testing import ServerHandle, running_server
from tests.receiver import test_e2e
from tests.receiver.conftest import Sender
from tests.receiver.test_e2e import Live
from tests.serving.conftest import Pki

# The live mTLS receiver of the end-to-end tests (registered under their own names).
live = test_e2e.live
pki = test_e2e.pki


def _head(live: Live, request: bytes) -> bytes:
    context = live.pki.context(live.stranger, http2=False)
    with (
        socket.create_connection(("127.0.0.1", live.server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = tls.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n\r\n")[0].lower()


def test_early_refusal_with_unread_body_says_connection_close(live: Live) -> None:
    # Headers only: the 100-byte body never comes, the identity check refuses first.
    head = _head(
        live,
        b"POST /hooks HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n"
        b"content-length: 100\r\n\r\n",
    )
    assert head.startswith(b"http/1.1 403")
    assert b"\r\nconnection: close" in head


# --- the server's keep-alive settings on a real connection ----------------------------------


def _tls_connection(server: ServerHandle, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        return context.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


class H1Connection:
    """One mTLS connection speaking HTTP/1.1 through h11, request after request."""

    def __init__(self, server: ServerHandle, context: ssl.SSLContext) -> None:
        self.tls = _tls_connection(server, context)
        self.h11 = h11.Connection(h11.CLIENT)

    def close(self) -> None:
        self.tls.close()

    def deliver(self, sender: Sender) -> h11.Response:
        """POST one signed webhook and read the whole answer."""
        if self.h11.our_state is h11.DONE:
            self.h11.start_next_cycle()
        body, headers = sender.request()
        fields = [("host", "localhost"), ("content-length", str(len(body))), *headers.items()]
        self.tls.sendall(
            self.h11.send(h11.Request(method="POST", target="/hooks", headers=fields))
            + self.h11.send(h11.Data(data=body))
            + self.h11.send(h11.EndOfMessage())
        )
        response: h11.Response | None = None
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(self.tls.recv(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                return response
            else:
                assert isinstance(event, h11.Data), event

    def closed_by_server(self) -> bool:
        """Block (at most the socket's 10 s timeout) until the server closes; True on EOF.

        A read that times out raises ``TimeoutError``: the server kept the connection.
        """
        return self.tls.recv(65536) == b""


class H2Connection:
    """One mTLS connection speaking HTTP/2 frames through h2 (no request needed to idle)."""

    def __init__(self, server: ServerHandle, context: ssl.SSLContext) -> None:
        self.tls = _tls_connection(server, context)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.h2.initiate_connection()
        self.tls.sendall(self.h2.data_to_send())

    def close(self) -> None:
        self.tls.close()

    def ping_answered(self) -> bool:
        """Send a PING and read until its ACK (True) or the server's close (False)."""
        assert self.tls.selected_alpn_protocol() == "h2"
        self.h2.ping(b"keepaliv")
        self.tls.sendall(self.h2.data_to_send())
        while data := self.tls.recv(65536):
            events = self.h2.receive_data(data)
            self.tls.sendall(self.h2.data_to_send())
            if any(isinstance(event, h2.events.PingAckReceived) for event in events):
                return True
        return False

    def closed_by_server(self) -> bool:
        """Read (bounded by the 10 s socket timeout) until the server closes; True on EOF."""
        while data := self.tls.recv(65536):
            self.h2.receive_data(data)  # SETTINGS, their ACK, a GOAWAY before the close
        return True


@dataclass
class KeepAlive:
    """Two servers differing only in keep-alive settings; each is the other's twin."""

    few_requests: ServerHandle  # keep_alive_max_requests=3, a long idle timeout
    short_idle: ServerHandle  # keep_alive_timeout_s=1, the default request budget
    context: ssl.SSLContext
    h2_context: ssl.SSLContext
    sender: Sender

    def connect(self, server: ServerHandle) -> H1Connection:
        return H1Connection(server, self.context)


@pytest.fixture(scope="module")
def keep_alive(
    tmp_path_factory: pytest.TempPathFactory, certs_ca: CA, sender: Sender
) -> Iterator[KeepAlive]:
    pki = Pki.create(tmp_path_factory.mktemp("keep-alive-pki"), certs_ca)
    identity = pki.identity("keep-alive-sender")
    app = Quart(__name__)
    hooks = WebhookReceiver(app, path="/hooks", keys=[sender.key])
    hooks.on_any(lambda event: None)
    # A long read timeout, so that only the keep-alive settings can close a quiet connection.
    few = pki.config(
        identity, keep_alive_max_requests=3, keep_alive_timeout_s=60.0, read_timeout_s=120.0
    )
    short = pki.config(identity, keep_alive_timeout_s=1.0, read_timeout_s=120.0)
    assert short.keep_alive_max_requests > 4
    with running_server(app, few) as few_server, running_server(app, short) as short_server:
        yield KeepAlive(
            few_server,
            short_server,
            pki.context(identity),
            pki.context(identity, http2=True),
            sender,
        )


def _says_close(response: h11.Response) -> bool:
    return (b"connection", b"close") in [(k.lower(), v.lower()) for k, v in response.headers]


def test_keep_alive_max_requests_ends_the_connection(keep_alive: KeepAlive) -> None:
    with (
        closing(keep_alive.connect(keep_alive.few_requests)) as limited,
        closing(keep_alive.connect(keep_alive.short_idle)) as unlimited,
    ):
        answers = [limited.deliver(keep_alive.sender) for _ in range(3)]
        assert [a.status_code for a in answers] == [204] * 3
        assert [_says_close(a) for a in answers] == [False, False, True]
        assert limited.closed_by_server()  # the 4th request needs a new connection
        # The twin: with the default budget, a 4th request shares the connection.
        assert [unlimited.deliver(keep_alive.sender).status_code for _ in range(4)] == [204] * 4
    with closing(keep_alive.connect(keep_alive.few_requests)) as again:
        assert again.deliver(keep_alive.sender).status_code == 204


def test_keep_alive_timeout_closes_an_idle_connection(keep_alive: KeepAlive) -> None:
    # The twin falls idle first, so a shared timeout would close it first.
    with closing(keep_alive.connect(keep_alive.few_requests)) as long:
        assert long.deliver(keep_alive.sender).status_code == 204
        with closing(keep_alive.connect(keep_alive.short_idle)) as short:
            # Used at once: the short timeout starts once it is idle.
            assert short.deliver(keep_alive.sender).status_code == 204
            # Idle now: the short timeout closes it (the read waits for that, at most 10 s).
            assert short.closed_by_server()
        # The twin, idle for longer: still open, its next request is served.
        assert long.deliver(keep_alive.sender).status_code == 204


def test_keep_alive_timeout_closes_an_idle_http2_connection(keep_alive: KeepAlive) -> None:
    context = keep_alive.h2_context
    with closing(H2Connection(keep_alive.few_requests, context)) as long:
        assert long.ping_answered()
        with closing(H2Connection(keep_alive.short_idle, context)) as short:
            assert short.ping_answered()
            assert short.closed_by_server()
        assert long.ping_answered()  # the twin, idle for longer: still open
