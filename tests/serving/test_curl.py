"""curl as a real, independent TLS peer (OpenSSL through libcurl, not Python's ssl)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from mtls_hooks.testing import ServerHandle
from tests.serving.conftest import Cast, Identity, Pki

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl binary")

CURL_PINNED_PUBKEY_MISMATCH = 90  # CURLE_SSL_PINNEDPUBKEYNOTMATCH


def _curl(
    server: ServerHandle, pki: Pki, identity: Identity | None, *extra: str
) -> subprocess.CompletedProcess[str]:
    args = ["curl", "--silent", "--show-error", "--max-time", "10", "--cacert", pki.ca_file]
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
def test_curl_pinned_client(server: ServerHandle, pki: Pki, cast: Cast, http_flag: str) -> None:
    result = _curl(server, pki, cast.gamma, http_flag)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["subject"] == "CN=gamma"


def test_curl_unpinned_client_is_refused(server: ServerHandle, pki: Pki, cast: Cast) -> None:
    result = _curl(server, pki, cast.stranger)
    assert result.returncode != 0
    assert result.stdout == ""


def test_curl_without_certificate_is_refused(server: ServerHandle, pki: Pki) -> None:
    result = _curl(server, pki, None)
    assert result.returncode != 0
    assert result.stdout == ""


def test_curl_pins_our_server_key(server: ServerHandle, pki: Pki, cast: Cast) -> None:
    # curl's form is sha256//<base64>; ours is sha256/<base64>: same digest.
    pin = "sha256//" + pki.server.spki_pin.removeprefix("sha256/")
    result = _curl(server, pki, cast.alpha, "--pinnedpubkey", pin)
    assert result.returncode == 0, result.stderr


def test_curl_pin_mismatch_exits_90(server: ServerHandle, pki: Pki, cast: Cast) -> None:
    wrong = "sha256//" + cast.alpha.spki_pin.removeprefix("sha256/")
    result = _curl(server, pki, cast.alpha, "--pinnedpubkey", wrong)
    assert result.returncode == CURL_PINNED_PUBKEY_MISMATCH, result.stderr
