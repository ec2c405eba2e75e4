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
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography import x509

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


@dataclass(frozen=True)
class Outcome:
    """One request on a new connection, as the client saw it."""

    data: bytes  # every byte of HTTP that came back
    session: ssl.SSLSession | None
    reused: bool
    error: Exception | None  # what ended the connection early, if anything

    @property
    def body(self) -> dict[str, Any]:
        assert self.data.startswith(b"HTTP/1.1 200"), (self.data[:100], self.error)
        parsed: dict[str, Any] = json.loads(self.data.partition(b"\r\n\r\n")[2])
        return parsed

    def assert_refused(self) -> None:
        """Not one byte of HTTP came back (the reason is asserted from the server's log).

        A full handshake ends in a TLS error; a refused resumption may end in a plain EOF,
        since the client's side of an abbreviated handshake completes first.
        """
        assert self.data == b"", f"the refused client got {self.data[:100]!r}"


def _get(
    server: ServerHandle, context: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> Outcome:
    data = b""
    new_session: ssl.SSLSession | None = None
    reused = False
    error: Exception | None = None
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
    except (ssl.SSLError, ConnectionError) as exc:
        # Kept, not swallowed: a refusal is asserted from it and from the server's log.
        error = exc
    return Outcome(data, new_session, reused, error)


def test_pinned_client_resumes_and_gets_tls_extension(fresh_pki: Pki) -> None:
    alpha = fresh_pki.identity("alpha")
    config = fresh_pki.config(alpha, crl=(fresh_pki.crl_file,))
    context = _tls12_context(fresh_pki, alpha)
    with running_server(app, config) as server:
        first = _get(server, context)
        assert first.body["subject"] == "CN=alpha"
        assert not first.reused
        resumed = _get(server, context, first.session)
    assert resumed.reused, "the server did not resume the TLS 1.2 session"
    assert resumed.error is None, "a resumed session of a pinned, unrevoked client was dropped"
    body = resumed.body
    assert body["subject"] == "CN=alpha"
    assert body["tls_version"] == 0x0303
    # OpenSSL keeps the leaf in the session but no verified chain: the leaf alone.
    assert body["chain_len"] == 1


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
        first = _get(server, context)
        assert first.body["subject"] == "CN=alpha"
        if change == "revoke":
            fresh_pki.ca.revoke(alpha.issued)
            fresh_pki.write_crl()
        else:
            _write_config(fresh_pki, beta)
        assert server.reload()
        resumed = _get(server, context, first.session)
        fresh = _get(server, context)
    resumed.assert_refused()
    fresh.assert_refused()
    lines = [line for line in refusals.lines if "event=handshake_refused" in line]
    # The resumed session first (the check on resumption), then the full handshake.
    assert [line.split(" reason=")[1].split(" ")[0] for line in lines] == [
        reason,
        "cert-verify-failed" if change == "revoke" else "unpinned",
    ], lines


def _wait_until_expired(cert: x509.Certificate, deadline_s: float = 10.0) -> None:
    """Poll the clock (bounded) until ``cert`` is past its notAfter, as the server sees it.

    Neither OpenSSL's verification time nor ``_check_resumed``'s clock can be injected, so
    real time has to pass; this waits on exactly the condition the server checks.
    """
    deadline = time.monotonic() + deadline_s
    tick = threading.Event()
    while dt.datetime.now(dt.UTC) <= cert.not_valid_after_utc:
        assert time.monotonic() < deadline, "the certificate did not expire in time"
        tick.wait(0.05)


def test_expired_client_cannot_resume(fresh_pki: Pki) -> None:
    now = dt.datetime.now(dt.UTC)
    brief = fresh_pki.identity("brief", not_after=now + dt.timedelta(seconds=2))
    config = fresh_pki.config(brief, crl=(fresh_pki.crl_file,))
    context = _tls12_context(fresh_pki, brief)
    with LogCollector("mtls_hooks.tls") as refusals, running_server(app, config) as server:
        first = _get(server, context)
        assert first.body["subject"] == "CN=brief"
        _wait_until_expired(brief.issued.certificate)
        resumed = _get(server, context, first.session)
    resumed.assert_refused()
    assert any("reason=expired-on-resume" in line for line in refusals.lines), refusals.lines
