"""Shutdown is bounded by graceful_timeout_s, even with a client that never finishes."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time

import httpx

from mtls_hooks.testing import running_server
from tests.serving.apps import app
from tests.serving.conftest import Cast, Pki

GRACEFUL_TIMEOUT_S = 1.0


def test_stalled_client_does_not_hold_shutdown(pki: Pki, cast: Cast) -> None:
    config = pki.config(cast.alpha, graceful_timeout_s=GRACEFUL_TIMEOUT_S)
    context = pki.context(cast.alpha)
    stalled: ssl.SSLSocket | None = None
    try:
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(running_server(app, config, stop_timeout_s=30.0))
            raw = socket.create_connection((server.host, server.port), timeout=10)
            stalled = context.wrap_socket(raw, server_hostname=server.host)
            # Headers promise 100 bytes of body; 10 arrive; the handler waits for the rest.
            stalled.sendall(
                b"POST /whoami HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
            )
            with httpx.Client(verify=context) as client:  # the server is otherwise healthy
                assert client.get(server.url("/whoami")).status_code == 200
            started = time.monotonic()
        # The stack closed the server while the stalled client still held its connection.
        elapsed_s = time.monotonic() - started
    finally:
        if stalled is not None:
            stalled.close()
    # Without the straggler shutdown, asyncio's 30 s ssl_shutdown_timeout applied.
    assert elapsed_s < GRACEFUL_TIMEOUT_S + 4.0
