"""Real nginx in front: ``ssl_verify_client on``, ``$ssl_client_escaped_cert`` to our server.

nginx terminates mTLS and forwards the certificate from 127.0.0.2 (``proxy_bind``); our server
runs in nginx mode and trusts 127.0.0.2/32 only. nginx is given the CA but not the CRL, and
pins nothing: what it accepts, we re-verify.
"""

from __future__ import annotations

import http.client
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtls_hooks.core._tls import create_client_context
from tests.nginx import NginxServer, run_nginx
from tests.peers import need_binary
from tests.proxy.conftest import PROXY_IP, ProxyPki, running_proxy_server

pytestmark = pytest.mark.nginx


@pytest.fixture(scope="module")
def stack(pki: ProxyPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxServer]:
    need_binary("nginx")
    with running_proxy_server(pki.config(client_cert_header="nginx")) as ours:
        to_us = (
            f"proxy_pass http://127.0.0.1:{ours.port}; proxy_bind {PROXY_IP}; "
            "proxy_set_header X-SSL-Client-Cert $ssl_client_escaped_cert;"
        )
        with run_nginx(
            tmp_path_factory.mktemp("nginx-front"),
            cert=pki.directory / "server.pem",
            key=pki.directory / "server-key.pem",
            client_ca=Path(pki.ca_file),
            verify_client=True,
            locations={"/whoami": to_us},
        ) as nginx:
            yield nginx


def _get(nginx: NginxServer, pki: ProxyPki, client: str) -> tuple[int, dict[str, object]]:
    context = create_client_context(
        ca_file=pki.ca_file,
        certfile=pki.directory / f"{client}.pem",
        keyfile=pki.directory / f"{client}-key.pem",
    )
    conn = http.client.HTTPSConnection("127.0.0.1", nginx.port, context=context, timeout=10)
    try:
        conn.request("GET", "/whoami")
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_pinned_client_gets_through_end_to_end(stack: NginxServer, pki: ProxyPki) -> None:
    status, body = _get(stack, pki, "good")
    assert status == 200, body
    assert body["spki"] == pki.pinned_spki
    assert body["forwarded"] == {"proxy": body["forwarded"]["proxy"], "header": "nginx"}  # type: ignore[index]


@pytest.mark.parametrize(
    ("client", "reason"),
    [
        pytest.param("unpinned", "unpinned", id="unpinned-same-ca"),
        pytest.param("revoked", "cert-verify-failed", id="revoked-crl-nginx-lacks"),
    ],
)
def test_nginx_accepted_but_we_refuse(
    stack: NginxServer, pki: ProxyPki, caplog: pytest.LogCaptureFixture, client: str, reason: str
) -> None:
    caplog.set_level(logging.WARNING, logger="mtls_hooks.tls")
    logged = len(stack.access_entries())  # the module's nginx logged the earlier tests too
    status, body = _get(stack, pki, client)
    assert status == 403, body
    assert body["reason"] == reason
    # nginx did accept the handshake: its access log says the certificate verified. It
    # writes the line after sending the answer: wait for this request's own line.
    [entry] = stack.wait_for_entries(logged + 1)[logged:]
    assert (entry["ssl_client_verify"], entry["status"]) == ("SUCCESS", "403")
    assert f"reason={reason} " in caplog.text
    assert f"peer={PROXY_IP}:" in caplog.text
