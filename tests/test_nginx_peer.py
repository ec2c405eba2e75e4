"""The nginx harness itself: mTLS refusals, keep-alive POSTs, canned statuses, stop by PID."""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from certs_tool import CA, IssuedCert
from tests.nginx import NginxServer, Response, render_config, run_nginx
from tests.peers import need_binary

pytestmark = pytest.mark.nginx


@pytest.fixture(autouse=True)
def _need_nginx() -> None:
    need_binary("nginx")  # skipped outside CI only; a failure under CI=true


@dataclass(frozen=True)
class Pki:
    ca: CA
    cert: Path
    key: Path
    ca_pem: Path
    client: IssuedCert


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = CA()
    server = ca.issue_server("localhost", "127.0.0.1")
    paths = Pki(
        ca=ca,
        cert=directory / "server.pem",
        key=directory / "server.key",
        ca_pem=directory / "ca.pem",
        client=ca.issue_client(common_name="nginx peer"),
    )
    server.chain_pem.write_to_path(paths.cert)
    server.private_key_pem().write_to_path(paths.key)
    ca.cert_pem.write_to_path(paths.ca_pem)
    return paths


@pytest.fixture
def nginx(tmp_path: Path, pki: Pki) -> Iterator[NginxServer]:
    locations: dict[str, Response | int | str] = {
        "/status/503": Response(503, "busy", {"Retry-After": "7"}),
        "/status/410": 410,
        "/raw": 'return 202 "raw";',
    }
    with run_nginx(
        tmp_path / "nginx", cert=pki.cert, key=pki.key, client_ca=pki.ca_pem, locations=locations
    ) as server:
        yield server


def client_context(ca: CA, client: IssuedCert | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(ctx)
    if client is not None:
        client.configure_cert(ctx)
    return ctx


def post(
    conn: http.client.HTTPSConnection, path: str = "/", body: bytes = b"x" * 1024
) -> tuple[int, bytes, http.client.HTTPResponse]:
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, response.read(), response


def test_keep_alive_posts_share_one_connection(nginx: NginxServer, pki: Pki) -> None:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", nginx.port, context=client_context(pki.ca, pki.client), timeout=10
    )
    try:
        answers = [post(conn)[:2] for _ in range(5)]
    finally:
        conn.close()
    assert answers == [(200, b"ok")] * 5
    entries = nginx.wait_for_entries(5)
    assert len(entries) == 5
    assert {entry["connection"] for entry in entries} == {entries[0]["connection"]}
    assert [entry["connection_requests"] for entry in entries] == ["1", "2", "3", "4", "5"]
    first = entries[0]
    assert first["status"] == "200"
    assert first["method"] == "POST"
    assert first["ssl_client_verify"] == "SUCCESS"
    assert first["ssl_client_s_dn"] == "CN=nginx peer"
    assert first["content_length"] == "1024"
    assert int(first["request_length"]) > 0


def test_canned_statuses_and_headers(nginx: NginxServer, pki: Pki) -> None:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", nginx.port, context=client_context(pki.ca, pki.client), timeout=10
    )
    try:
        status, body, response = post(conn, "/status/503")
        assert (status, body, response.getheader("Retry-After")) == (503, b"busy", "7")
        assert post(conn, "/status/410")[0] == 410
        assert post(conn, "/raw")[:2] == (202, b"raw")
        assert post(conn, "/anything/else")[:2] == (200, b"ok")
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("who", "verify", "body"),
    [
        pytest.param("no-certificate", "NONE", b"No required SSL certificate", id="no-cert"),
        pytest.param(
            "other-ca",
            "FAILED:unable to verify the first certificate",
            b"The SSL certificate error",
            id="other-ca",
        ),
    ],
)
def test_client_without_a_valid_certificate_is_refused(
    nginx: NginxServer, pki: Pki, who: str, verify: str, body: bytes
) -> None:
    # nginx finishes the handshake and answers 400 itself: no request reaches a location.
    client = None if who == "no-certificate" else CA().issue_client(common_name="stranger")
    conn = http.client.HTTPSConnection(
        "127.0.0.1", nginx.port, context=client_context(pki.ca, client), timeout=10
    )
    try:
        status, answer, _ = post(conn)
    finally:
        conn.close()
    assert status == 400
    assert body in answer
    [entry] = nginx.wait_for_entries(1)
    assert entry["status"] == "400"
    assert entry["ssl_client_verify"] == verify


def test_revoked_client_is_refused_with_a_crl(tmp_path: Path, pki: Pki) -> None:
    revoked = pki.ca.issue_client(common_name="revoked")
    pki.ca.revoke(revoked)
    crl = tmp_path / "ca.crl"
    pki.ca.crl_pem().write_to_path(crl)
    with run_nginx(
        tmp_path / "nginx", cert=pki.cert, key=pki.key, client_ca=pki.ca_pem, crl=crl
    ) as server:
        results = {}
        for name, client in (("good", pki.client), ("revoked", revoked)):
            conn = http.client.HTTPSConnection(
                "127.0.0.1", server.port, context=client_context(pki.ca, client), timeout=10
            )
            try:
                results[name] = post(conn)[0]
            finally:
                conn.close()
    assert results == {"good": 200, "revoked": 400}


def test_stop_by_pid_leaves_no_process(tmp_path: Path, pki: Pki) -> None:
    with run_nginx(tmp_path / "n", cert=pki.cert, key=pki.key, client_ca=pki.ca_pem) as server:
        pid = server.pid
        assert Path(f"/proc/{pid}").exists()
        assert (server.workdir / "nginx.pid").read_text().strip() == str(pid)
    assert not Path(f"/proc/{pid}").exists()
    with pytest.raises(ConnectionRefusedError):
        http.client.HTTPConnection("127.0.0.1", server.port, timeout=2).connect()


def test_config_refuses_verification_without_a_ca(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="client_ca"):
        render_config(
            tmp_path, port=1, cert=tmp_path / "c", key=tmp_path / "k", client_ca=None,
            verify_client=True, locations={}, crl=None, worker_cpu=None,
        )  # fmt: skip


def test_strings_that_nginx_cannot_quote_are_refused() -> None:
    with pytest.raises(ValueError, match="nginx string"):
        Response(200, "costs $5").directives()
