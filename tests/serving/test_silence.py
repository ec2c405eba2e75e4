"""A connection silent for read_timeout_s is closed (a slow-loris head never completes)."""

from __future__ import annotations

import socket
import ssl
import time

import httpx

from mtls_hooks.testing import running_server
from tests.serving.apps import app
from tests.serving.conftest import Cast, Pki

READ_TIMEOUT_S = 0.5


def test_silent_connection_is_closed_and_talkative_one_is_served(pki: Pki, cast: Cast) -> None:
    config = pki.config(cast.alpha, read_timeout_s=READ_TIMEOUT_S)
    context = pki.context(cast.alpha)
    with running_server(app, config) as server:
        raw = socket.create_connection((server.host, server.port), timeout=10)
        with context.wrap_socket(raw, server_hostname=server.host) as silent:
            silent.sendall(b"POST /whoami HTTP/1.1\r\nHost: x\r\n")  # the head never ends
            started = time.monotonic()
            try:
                closed = silent.recv(1024) == b""
            except (ConnectionResetError, ssl.SSLEOFError):
                closed = True  # the server's close, as a reset or a TLS EOF: still a close
            waited_s = time.monotonic() - started
        with httpx.Client(verify=context) as client:  # the twin: a request that talks
            assert client.get(server.url("/whoami")).status_code == 200
    assert closed
    # closed by the read timeout: not by keep_alive_timeout_s (5 s) nor our 10 s socket timeout
    assert waited_s < READ_TIMEOUT_S + 3.0
