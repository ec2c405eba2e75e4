"""curl as a real, independent TLS peer (OpenSSL through libcurl, not Python's ssl)."""

from __future__ import annotations

import json
import subprocess

import pytest

from mtls_hooks.testing import ServerHandle
from tests.peers import need_binary
from tests.serving.conftest import Cast, Identity, LogCollector, Pki

CURL_PINNED_PUBKEY_MISMATCH = 90  # CURLE_SSL_PINNEDPUBKEYNOTMATCH
# A client refused in the handshake gets a transport error, never an HTTP status: 35
# (CURLE_SSL_CONNECT_ERROR) inside curl's handshake; after it, since TLS 1.3 lets curl
# finish first, 55 or 56 (send or receive failed), 52 (empty reply) or, over h2, 18.
CURL_TRANSPORT_ERRORS = {18, 35, 52, 55, 56}


@pytest.fixture(scope="module")
def curl() -> str:
    """The curl binary: skipped outside CI when missing, a failure in CI."""
    return need_binary("curl")


def _curl(
    curl: str, server: ServerHandle, pki: Pki, identity: Identity | None, *extra: str
) -> subprocess.CompletedProcess[str]:
    args = [curl, "--silent", "--show-error", "--max-time", "10", "--cacert", pki.ca_file]
    if identity is not None:
        args += ["--cert", identity.cert, "--key", identity.key]
    return subprocess.run(
        [*args, *extra, server.url("/whoami")],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


@pytest.mark.parametrize("http_flag", ["--http1.1", "--http2"])
def test_curl_pinned_client(
    curl: str, server: ServerHandle, pki: Pki, cast: Cast, http_flag: str
) -> None:
    result = _curl(curl, server, pki, cast.gamma, http_flag)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["subject"] == "CN=gamma"


@pytest.mark.parametrize(
    ("who", "reason"),
    [
        pytest.param("stranger", "unpinned", id="unpinned-client"),
        pytest.param(None, "no-certificate", id="no-certificate"),
    ],
)
def test_curl_refused_client(
    curl: str, server: ServerHandle, pki: Pki, cast: Cast, *, who: str | None, reason: str
) -> None:
    identity = getattr(cast, who) if who else None
    with LogCollector("mtls_hooks.tls", wake_on="event=handshake_refused") as log:
        result = _curl(curl, server, pki, identity, "--write-out", "%{http_code}")
        assert log.matched.wait(10.0), "the server logged no refusal"
    assert result.returncode in CURL_TRANSPORT_ERRORS, (result.returncode, result.stderr)
    assert result.stdout == "000"  # curl's code for "no HTTP response at all"
    [line] = [line for line in log.lines if "event=handshake_refused" in line]
    assert f" reason={reason} " in line


def test_curl_pins_our_server_key(curl: str, server: ServerHandle, pki: Pki, cast: Cast) -> None:
    # curl's form is sha256//<base64>; ours is sha256/<base64>: same digest.
    pin = "sha256//" + pki.server.spki_pin.removeprefix("sha256/")
    result = _curl(curl, server, pki, cast.alpha, "--pinnedpubkey", pin)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["subject"] == "CN=alpha"


def test_curl_pin_mismatch_exits_90(curl: str, server: ServerHandle, pki: Pki, cast: Cast) -> None:
    wrong = "sha256//" + cast.alpha.spki_pin.removeprefix("sha256/")
    result = _curl(curl, server, pki, cast.alpha, "--pinnedpubkey", wrong)
    assert result.returncode == CURL_PINNED_PUBKEY_MISMATCH, result.stderr
    assert result.stdout == ""
