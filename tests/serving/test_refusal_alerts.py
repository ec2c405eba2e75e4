"""What a refused client reads: a TLS alert where TLS allows one, a close_notify otherwise.

Python 3.11's asyncio dropped whatever OpenSSL had queued when a handshake failed, so every
refused client, whatever the reason, saw an unexpected EOF. Now:

* OpenSSL's own refusals (unknown CA, no certificate, revoked, expired) carry OpenSSL's
  alert, under TLS 1.2 and 1.3;
* a pin refusal is a fatal ``access_denied`` alert under TLS 1.2 (sent instead of the
  server's Finished); under TLS 1.3 the server's Finished went out before the client's
  certificate arrived, and the only alert OpenSSL will encrypt for us is ``close_notify``:
  the client reads a clean close, not an unexpected EOF.

The clients are the stdlib's ``ssl`` (nothing of ours) and the openssl CLI. Each reads
before it writes, as a TLS health check does.
"""

from __future__ import annotations

import socket
import ssl
import subprocess

import pytest

from mtls_hooks.testing import ServerHandle, running_server
from tests.peers import need_binary
from tests.serving.apps import app
from tests.serving.conftest import Cast, Identity, LogCollector, Pki

TLS12 = pytest.param(ssl.TLSVersion.TLSv1_2, id="tls1.2")
TLS13 = pytest.param(ssl.TLSVersion.TLSv1_3, id="tls1.3")
CLEAN_CLOSE = "clean close"  # recv() returned b"": the server's close_notify arrived

# (identity, TLS version) -> what the client reads: an alert's reason, or a clean close.
EXPECTED = [
    pytest.param(
        "stranger", ssl.TLSVersion.TLSv1_2, "TLSV1_ALERT_ACCESS_DENIED", id="unpinned-tls1.2"
    ),
    pytest.param("stranger", ssl.TLSVersion.TLSv1_3, CLEAN_CLOSE, id="unpinned-tls1.3"),
    pytest.param(
        "outsider", ssl.TLSVersion.TLSv1_2, "TLSV1_ALERT_UNKNOWN_CA", id="wrong-ca-tls1.2"
    ),
    pytest.param(
        "outsider", ssl.TLSVersion.TLSv1_3, "TLSV1_ALERT_UNKNOWN_CA", id="wrong-ca-tls1.3"
    ),
    pytest.param(
        None, ssl.TLSVersion.TLSv1_2, "SSLV3_ALERT_HANDSHAKE_FAILURE", id="no-cert-tls1.2"
    ),
    pytest.param(
        None, ssl.TLSVersion.TLSv1_3, "TLSV13_ALERT_CERTIFICATE_REQUIRED", id="no-cert-tls1.3"
    ),
    pytest.param(
        "revoked", ssl.TLSVersion.TLSv1_2, "SSLV3_ALERT_CERTIFICATE_REVOKED", id="revoked-tls1.2"
    ),
    pytest.param(
        "revoked", ssl.TLSVersion.TLSv1_3, "SSLV3_ALERT_CERTIFICATE_REVOKED", id="revoked-tls1.3"
    ),
    pytest.param(
        "expired", ssl.TLSVersion.TLSv1_2, "SSLV3_ALERT_CERTIFICATE_EXPIRED", id="expired-tls1.2"
    ),
    pytest.param(
        "expired", ssl.TLSVersion.TLSv1_3, "SSLV3_ALERT_CERTIFICATE_EXPIRED", id="expired-tls1.3"
    ),
]


def _stdlib_context(pki: Pki, identity: Identity | None, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.ca_file)
    context.minimum_version = context.maximum_version = version
    if identity is not None:
        context.load_cert_chain(identity.cert, identity.key)
    return context


def _read_first(server: ServerHandle, context: ssl.SSLContext) -> str:
    """Handshake, then read before writing; return what the client saw."""
    with socket.create_connection((server.host, server.port), timeout=10) as raw:
        try:
            # suppress_ragged_eofs=False: an EOF without close_notify raises SSLEOFError
            # instead of reading as b"", so the two cannot be confused.
            with context.wrap_socket(
                raw, server_hostname="localhost", suppress_ragged_eofs=False
            ) as tls:
                data = tls.recv(1)
        except ssl.SSLError as exc:
            return str(exc.reason)
    return CLEAN_CLOSE if data == b"" else f"data {data!r}"


@pytest.mark.parametrize(("who", "version", "expected"), EXPECTED)
def test_a_refused_client_reads_why(
    *,
    server: ServerHandle,
    pki: Pki,
    cast: Cast,
    who: str | None,
    version: ssl.TLSVersion,
    expected: str,
) -> None:
    identity = getattr(cast, who) if who else None
    with LogCollector("mtls_hooks.tls", wake_on="event=handshake_refused") as log:
        seen = _read_first(server, _stdlib_context(pki, identity, version))
        # Logged before the alert is written: already there when the client has read it.
        assert log.matched.is_set()
    assert seen == expected


@pytest.mark.parametrize("version", [TLS12, TLS13])
def test_the_pinned_twin_is_answered(
    server: ServerHandle, pki: Pki, cast: Cast, version: ssl.TLSVersion
) -> None:
    context = _stdlib_context(pki, cast.alpha, version)
    with (
        socket.create_connection((server.host, server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"GET /whoami HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        assert tls.recv(12) == b"HTTP/1.1 200"


# --------------------------------------------------------------------------- openssl CLI


def _s_client(
    server: ServerHandle, pki: Pki, identity: Identity, version: str
) -> subprocess.CompletedProcess[str]:
    # fmt: off
    return subprocess.run(
        [
            need_binary("openssl"), "s_client", "-connect", f"{server.host}:{server.port}",
            "-servername", "localhost", "-CAfile", pki.ca_file, "-verify_return_error",
            "-cert", identity.cert, "-key", identity.key, version, "-ign_eof", "-quiet",
        ],
        input="", capture_output=True, text=True, timeout=20, check=False,
    )
    # fmt: on


def test_openssl_tls12_unpinned_client_reads_access_denied(
    server: ServerHandle, pki: Pki, cast: Cast
) -> None:
    done = _s_client(server, pki, cast.stranger, "-tls1_2")
    assert done.returncode == 1
    assert "tlsv1 alert access denied" in done.stderr
    assert "SSL alert number 49" in done.stderr


def test_openssl_tls13_unpinned_client_reads_a_clean_close(
    server: ServerHandle, pki: Pki, cast: Cast
) -> None:
    done = _s_client(server, pki, cast.stranger, "-tls1_3")
    # Without the server's close_notify: "unexpected eof while reading", exit status 1.
    assert "unexpected eof" not in done.stderr
    assert "alert" not in done.stderr
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_openssl_wrong_ca_client_reads_unknown_ca(
    server: ServerHandle, pki: Pki, cast: Cast, version: str
) -> None:
    done = _s_client(server, pki, cast.outsider, version)
    assert done.returncode == 1
    assert "SSL alert number 48" in done.stderr  # unknown_ca, RFC 8446 §6


# --------------------------------------------------------------------------- resumption


def test_a_resumed_session_refused_after_revocation_reads_a_clean_close(fresh_pki: Pki) -> None:
    # An abbreviated TLS 1.2 handshake: the server's Finished left first, so only an
    # encrypted alert can follow, and close_notify is the one OpenSSL encrypts for us.
    alpha = fresh_pki.identity("alpha")
    context = _stdlib_context(fresh_pki, alpha, ssl.TLSVersion.TLSv1_2)
    config = fresh_pki.config(alpha, crl=(fresh_pki.crl_file,))
    with LogCollector("mtls_hooks.tls") as log, running_server(app, config) as server:
        with (
            socket.create_connection((server.host, server.port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            # The server closes first, with close_notify: OpenSSL drops from its cache the
            # session of a connection that ended without one (ssl_clear_bad_session).
            tls.sendall(b"GET /whoami HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200")
            session = tls.session
        fresh_pki.ca.revoke(alpha.issued)
        fresh_pki.write_crl()
        assert server.reload()
        with (
            socket.create_connection((server.host, server.port), timeout=10) as raw,
            context.wrap_socket(
                raw, server_hostname="localhost", session=session, suppress_ragged_eofs=False
            ) as tls,
        ):
            assert tls.session_reused
            assert tls.recv(1) == b""  # close_notify; without it: SSLEOFError
    assert any(" reason=revoked-on-resume " in line for line in log.lines), log.lines
