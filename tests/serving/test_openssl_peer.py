"""`openssl s_client` as a real peer: the pinned client is answered, the refused ones are not.

The refusal happens in the handshake: under TLS 1.3 s_client completes its side, writes the
request and then finds the connection closed, with not one byte of HTTP in return; the
server logs why. Under TLS 1.2 s_client's own handshake fails.
"""

from __future__ import annotations

import subprocess

import pytest

from mtls_hooks.testing import ServerHandle
from tests.peers import need_binary
from tests.serving.conftest import Cast, Identity, LogCollector, Pki

REQUEST = b"GET /whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


@pytest.fixture(scope="module")
def openssl() -> str:
    """The openssl CLI: skipped outside CI when missing, a failure in CI."""
    return need_binary("openssl")


def _s_client(
    openssl: str, server: ServerHandle, pki: Pki, identity: Identity | None, *extra: str
) -> subprocess.CompletedProcess[bytes]:
    cert = ["-cert", identity.cert, "-key", identity.key] if identity else []
    # fmt: off
    return subprocess.run(
        [
            openssl, "s_client", "-connect", f"{server.host}:{server.port}",
            "-servername", "localhost", "-CAfile", pki.ca_file, "-verify_return_error",
            *cert, *extra, "-ign_eof", "-quiet",
        ],
        input=REQUEST, capture_output=True, timeout=20, check=False,
    )
    # fmt: on


@pytest.mark.parametrize(
    "version", [pytest.param("-tls1_3", id="tls1.3"), pytest.param("-tls1_2", id="tls1.2")]
)
def test_openssl_pinned_client_is_answered(
    openssl: str, server: ServerHandle, pki: Pki, cast: Cast, version: str
) -> None:
    done = _s_client(openssl, server, pki, cast.alpha, version)
    out = done.stdout.decode(errors="replace")
    assert out.startswith("HTTP/1.1 200"), done.stderr
    assert '"subject":"CN=alpha"' in out.replace(" ", "")


@pytest.mark.parametrize(
    "version", [pytest.param("-tls1_3", id="tls1.3"), pytest.param("-tls1_2", id="tls1.2")]
)
@pytest.mark.parametrize(
    ("who", "reason"),
    [
        pytest.param("stranger", "unpinned", id="unpinned-client"),
        pytest.param(None, "no-certificate", id="no-certificate"),
    ],
)
def test_openssl_refused_client_gets_no_http(
    openssl: str,
    server: ServerHandle,
    pki: Pki,
    cast: Cast,
    *,
    who: str | None,
    reason: str,
    version: str,
) -> None:
    identity = getattr(cast, who) if who else None
    with LogCollector("mtls_hooks.tls", wake_on="event=handshake_refused") as log:
        done = _s_client(openssl, server, pki, identity, version)
        assert log.matched.wait(10.0), "the server logged no refusal"
    assert done.stdout == b"", done.stdout[:200]
    [line] = [line for line in log.lines if "event=handshake_refused" in line]
    assert f" reason={reason} " in line
    if version == "-tls1_2":
        # The server's verdict lands inside s_client's own handshake, which then fails.
        # An alert, an "unexpected eof" or a reset, reported by OpenSSL's TLS layer.
        assert done.returncode != 0
        assert b":SSL routines:" in done.stderr or b"errno=104" in done.stderr, done.stderr
