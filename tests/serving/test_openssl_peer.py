"""`openssl s_client` as a real peer: the pinned client is answered, the unpinned one refused.

The refusal happens in the handshake: under TLS 1.3 s_client completes its side, writes the
request and then finds the connection closed, with not one byte of HTTP in return.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from mtls_hooks.testing import ServerHandle
from tests.serving.conftest import Cast, Identity, Pki

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")

REQUEST = b"GET /whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def _s_client(server: ServerHandle, pki: Pki, identity: Identity) -> str:
    # fmt: off
    done = subprocess.run(
        [
            "openssl", "s_client", "-connect", f"{server.host}:{server.port}",
            "-servername", "localhost", "-CAfile", pki.ca_file, "-verify_return_error",
            "-cert", identity.cert, "-key", identity.key, "-ign_eof", "-quiet",
        ],
        input=REQUEST, capture_output=True, timeout=20, check=False,
    )
    # fmt: on
    return done.stdout.decode(errors="replace")


def test_openssl_pinned_client_is_answered(server: ServerHandle, pki: Pki, cast: Cast) -> None:
    out = _s_client(server, pki, cast.alpha)
    assert out.startswith("HTTP/1.1 200")
    assert '"subject":"CN=alpha"' in out.replace(" ", "")


def test_openssl_unpinned_client_is_refused(server: ServerHandle, pki: Pki, cast: Cast) -> None:
    assert "HTTP/" not in _s_client(server, pki, cast.stranger)
