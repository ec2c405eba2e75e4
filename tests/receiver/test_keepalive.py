"""A refusal sent before the body was read announces the close (RFC 9112 §9.6).

Hypercorn closes an HTTP/1.1 connection whose request body is still unread once the answer
is out. Without ``Connection: close`` a pooling sender would send its next webhook into the
closing socket and see a dropped connection instead of the 403 it deserved.
"""

from __future__ import annotations

import socket

from tests.receiver import test_e2e
from tests.receiver.test_e2e import Live

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
