"""Resumed TLS 1.2 sessions: answered with the ``tls`` extension, refused once revoked.

OpenSSL's server session-ID cache stays on whatever ``OP_NO_TICKET`` says, and a resumed
session skips chain and CRL verification; ``_tls._check_resumed`` re-checks the leaf against
the current CRL and its expiry. Java clients and nginx (``proxy_ssl_session_reuse``) resume
by default, so both halves matter: a good client must get its answer, a revoked one must not.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import time
from typing import Any

import pytest

from mtls_hooks.serving._config import ServerConfig
from mtls_hooks.testing import ServerHandle, running_server
from tests.serving.apps import app
from tests.serving.conftest import Identity, LogCollector, Pki

REQUEST = b"GET /whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def _tls12_context(pki: Pki, identity: Identity) -> ssl.SSLContext:
    # TLS 1.2 at most: the server then resumes by session ID (it sends no TLS 1.3 tickets).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(pki.ca_file)
    context.load_cert_chain(identity.cert, identity.key)
    return context


def _get(
    server: ServerHandle, context: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> tuple[dict[str, Any] | None, ssl.SSLSession | None, bool]:
    """One request on a new connection: ``(body, or None if refused; session; reused)``."""
    data = b""
    new_session: ssl.SSLSession | None = None
    reused = False
    try:
        with (
            socket.create_connection((server.host, server.port), timeout=10.0) as raw,
            context.wrap_socket(raw, server_hostname="localhost", session=session) as tls,
        ):
            reused = bool(tls.session_reused)
            new_session = tls.session
            tls.sendall(REQUEST)
            while chunk := tls.recv(65536):
                data += chunk
    except (ssl.SSLError, OSError):
        pass  # refused: an alert during a full handshake, a drop after a resumed one
    if not data.startswith(b"HTTP/1.1 200"):
        return None, new_session, reused
    body: dict[str, Any] = json.loads(data.partition(b"\r\n\r\n")[2])
    return body, new_session, reused


def test_pinned_client_resumes_and_gets_tls_extension(fresh_pki: Pki) -> None:
    alpha = fresh_pki.identity("alpha")
    config = fresh_pki.config(alpha, crl=(fresh_pki.crl_file,))
    context = _tls12_context(fresh_pki, alpha)
    with running_server(app, config) as server:
        first, session, reused = _get(server, context)
        assert first is not None
        assert not reused
        resumed, _, reused = _get(server, context, session)
    assert reused, "the server did not resume the TLS 1.2 session"
    assert resumed is not None, "a resumed session of a pinned, unrevoked client was dropped"
    assert resumed["subject"] == "CN=alpha"
    assert resumed["tls_version"] == 0x0303
    # OpenSSL keeps the leaf in the session but no verified chain: the leaf alone.
    assert resumed["chain_len"] == 1


def _write_config(pki: Pki, *pinned: Identity) -> ServerConfig:
    path = pki.directory / "receiver.toml"
    pins = ", ".join(f"'{i.spki_pin}'" for i in pinned)
    path.write_text(
        "[server]\ncertfile = 'server.pem'\nkeyfile = 'server.key'\nclient_ca = ['ca.pem']\n"
        f"crl = ['crl.pem']\npins = [{pins}]\ngraceful_timeout_s = 2\n",
        encoding="utf-8",
    )
    return ServerConfig.from_toml(path)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        pytest.param("revoke", "revoked-on-resume", id="revoked-client"),
        pytest.param("unpin", "unpinned", id="unpinned-client"),
    ],
)
def test_resumption_refused_after_reload(fresh_pki: Pki, change: str, reason: str) -> None:
    alpha, beta = fresh_pki.identity("alpha"), fresh_pki.identity("beta")
    config = _write_config(fresh_pki, alpha, beta)
    context = _tls12_context(fresh_pki, alpha)
    with LogCollector("mtls_hooks.tls") as refusals, running_server(app, config) as server:
        first, session, _ = _get(server, context)
        assert first is not None
        if change == "revoke":
            fresh_pki.ca.revoke(alpha.issued)
            fresh_pki.write_crl()
        else:
            _write_config(fresh_pki, beta)
        assert server.reload()
        resumed, _, _ = _get(server, context, session)
        fresh, _, _ = _get(server, context)
    assert resumed is None, f"the session resumed after the reload ({change})"
    assert fresh is None
    assert any(f"reason={reason}" in line for line in refusals.lines), refusals.lines


def test_expired_client_cannot_resume(fresh_pki: Pki) -> None:
    now = dt.datetime.now(dt.UTC)
    brief = fresh_pki.identity("brief", not_after=now + dt.timedelta(seconds=2))
    config = fresh_pki.config(brief, crl=(fresh_pki.crl_file,))
    context = _tls12_context(fresh_pki, brief)
    with LogCollector("mtls_hooks.tls") as refusals, running_server(app, config) as server:
        first, session, _ = _get(server, context)
        assert first is not None
        expired_at = now + dt.timedelta(seconds=2.1)
        time.sleep(max(0.0, (expired_at - dt.datetime.now(dt.UTC)).total_seconds()))
        resumed, _, _ = _get(server, context, session)
    assert resumed is None, "a client resumed the session of an expired certificate"
    assert any("reason=expired-on-resume" in line for line in refusals.lines), refusals.lines
