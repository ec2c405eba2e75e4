"""The blocking ``serve()`` in this very process: signals drive reload and shutdown."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import threading

import httpx

from mtls_hooks.serving._workers import serve
from tests.serving.apps import app
from tests.serving.conftest import LogCollector, Pki


def test_serve_reloads_on_sighup_and_stops_on_sigterm(fresh_pki: Pki) -> None:
    pki = fresh_pki
    alpha = pki.identity("alpha")
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    url = f"https://127.0.0.1:{port}/whoami"
    seen: list[bytes] = []
    errors: list[BaseException] = []

    def drive() -> None:
        # Runs once serve() accepts connections: its SIGHUP/SIGTERM handlers are installed.
        try:
            with httpx.Client(verify=pki.context(alpha)) as client:
                seen.append(ssl.PEM_cert_to_DER_cert(client.get(url).json()["server_cert"]))
            pki.write_server(pki.ca.issue_server("localhost", "127.0.0.1"))
            with LogCollector("mtls_hooks.reload", wake_on="event=reloaded") as log:
                os.kill(os.getpid(), signal.SIGHUP)
                assert log.matched.wait(10.0)
            with httpx.Client(verify=pki.context(alpha)) as client:
                seen.append(ssl.PEM_cert_to_DER_cert(client.get(url).json()["server_cert"]))
        except BaseException as exc:  # reported in the test thread
            errors.append(exc)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_ready(pids: tuple[int, ...]) -> None:
        assert pids == (os.getpid(),)
        threading.Thread(target=drive, daemon=True).start()

    status = serve(app, pki.config(alpha, graceful_timeout_s=1.0), sockets=[sock], ready=on_ready)
    sock.close()
    assert errors == []
    assert status == 0
    assert len(seen) == 2
    assert seen[0] != seen[1]
    assert seen[1] == ssl.PEM_cert_to_DER_cert(pki.server.cert_pem.bytes().decode())
