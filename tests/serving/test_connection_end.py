"""A connection's server side ends when its client leaves, not when the keep-alive timer fires.

The RSS check (``test_handshake_memory.py``) shows the cost; this shows the cause, in
process and fast: with a 60 s keep-alive timeout, the server's connection object of a client
that completed its handshake and closed must be gone within seconds, while the one of a
client that stays connected (the twin) must still be there.
"""

from __future__ import annotations

import gc
import socket
import ssl
import time

from mtls_hooks.serving._serving import _TLSScopeApp, _TLSTCPServer
from mtls_hooks.testing import running_server
from tests.serving.apps import app
from tests.serving.conftest import Pki

KEEP_ALIVE_TIMEOUT_S = 60.0
DEADLINE_S = 10.0


def _live_connections(server_cert_pem: str) -> int:
    """This server's connection objects that are still referenced (garbage collected first)."""
    gc.collect()
    return sum(
        1
        for obj in gc.get_objects()
        if isinstance(obj, _TLSTCPServer)
        and isinstance(obj.app, _TLSScopeApp)
        and obj.app._tls["server_cert"] == server_cert_pem
    )


def _wait_for(server_cert_pem: str, count: int) -> int:
    deadline = time.monotonic() + DEADLINE_S
    while (live := _live_connections(server_cert_pem)) != count and time.monotonic() < deadline:
        time.sleep(0.05)
    return live


def test_the_server_forgets_a_client_that_left(fresh_pki: Pki) -> None:
    alpha = fresh_pki.identity("alpha")
    config = fresh_pki.config(alpha, keep_alive_timeout_s=KEEP_ALIVE_TIMEOUT_S)
    context = ssl.create_default_context(cafile=fresh_pki.ca_file)
    context.load_cert_chain(alpha.cert, alpha.key)
    pem = fresh_pki.server.cert_pem.bytes().decode()
    with running_server(app, config) as server:
        staying = context.wrap_socket(
            socket.create_connection((server.host, server.port), timeout=10),
            server_hostname="localhost",
        )
        try:
            for _ in range(5):  # health checks: handshake, close
                with (
                    socket.create_connection((server.host, server.port), timeout=10) as raw,
                    context.wrap_socket(raw, server_hostname="localhost"),
                ):
                    pass
            # The five that left are gone long before the keep-alive timeout; the one that
            # stays is still served (the probe sees live connections).
            assert _wait_for(pem, 1) == 1
            staying.sendall(b"GET /whoami HTTP/1.1\r\nhost: localhost\r\n\r\n")
            assert staying.recv(12) == b"HTTP/1.1 200"
        finally:
            staying.close()
        assert _wait_for(pem, 0) == 0
