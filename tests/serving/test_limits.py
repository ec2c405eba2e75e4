"""Timeouts and header limits reach Hypercorn."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.serving._workers import _spec_of, load_app
from mtls_hooks.testing import running_server
from tests.serving.apps import app
from tests.serving.conftest import Cast, Pki


def test_silent_client_is_dropped_after_handshake_timeout(pki: Pki, cast: Cast) -> None:
    config = pki.config(cast.alpha, handshake_timeout_s=0.5)
    with (
        running_server(app, config) as server,
        socket.create_connection((server.host, server.port), timeout=10) as silent,
    ):
        started = time.monotonic()
        assert silent.recv(1) == b""  # the server hung up: no ClientHello in time
        assert time.monotonic() - started < 5.0


def test_oversized_headers_are_refused(pki: Pki, cast: Cast) -> None:
    config = pki.config(cast.alpha, max_header_bytes=4096)
    with running_server(app, config) as server, httpx.Client(verify=pki.context(cast.alpha)) as c:
        assert c.get(server.url("/whoami"), headers={"x-small": "a" * 1000}).status_code == 200
        response = c.get(server.url("/whoami"), headers={"x-big": "a" * 8192})
        assert response.status_code == 431
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"].endswith("the limit is 4096")


def test_app_spec_for_workers() -> None:
    assert _spec_of(app) == "tests.serving.apps:app"
    assert load_app("tests.serving.apps:app") is app
    with pytest.raises(ConfigurationError, match="module:attribute"):
        _spec_of(lambda scope: scope)
