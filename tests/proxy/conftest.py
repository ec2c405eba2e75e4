"""Fixtures for proxy mode: a PKI with every kind of bad client, header encoders, a server.

The trusted proxy is ``127.0.0.2``: a test client binds its socket's source address to it
(Linux routes all of 127.0.0.0/8 to the loopback interface), and a "direct" client connects
from ``127.0.0.1``, which is not trusted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import http.client
import json
import socket
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from quart import Quart, request

from certs_tool import CA, IssuedCert
from mtls_hooks.receiver._authz import current_peer
from mtls_hooks.serving._config import ServerConfig
from mtls_hooks.serving._forwarded import FORWARDED_KEY, ProxyMaterial, forwarded_refusals
from mtls_hooks.serving._serving import log_refusal, serve_async

PROXY_IP = "127.0.0.2"
DIRECT_IP = "127.0.0.1"
FORMATS = ("rfc9440", "xfcc", "nginx", "alb", "traefik")

app = Quart(__name__)


@app.route("/whoami", methods=["GET", "POST"])
async def whoami() -> dict[str, Any]:
    await request.get_data()
    peer = current_peer()
    tls = request.scope["extensions"]["tls"]
    return {
        "subject": peer.subject,
        "spki": peer.spki_pin,
        "forwarded": tls.get(FORWARDED_KEY),
        "chain_len": len(tls["client_cert_chain"]),
        "tls_version": tls["tls_version"],
        "headers": sorted(request.headers.keys()),
    }


def _der(cert: IssuedCert | CA) -> bytes:
    return cert.certificate.public_bytes(Encoding.DER)


def _pem(der: bytes) -> str:
    body = base64.encodebytes(der).decode("ascii")
    return f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n"


def encode(header_format: str, chain: list[bytes]) -> dict[str, str]:
    """The headers a proxy of ``header_format`` sends for ``chain`` (leaf first, DER)."""
    leaf, rest = chain[0], chain[1:]
    if header_format == "rfc9440":
        headers = {"Client-Cert": f":{base64.b64encode(leaf).decode()}:"}
        if rest:
            headers["Client-Cert-Chain"] = ", ".join(
                f":{base64.b64encode(der).decode()}:" for der in rest
            )
        return headers
    if header_format == "xfcc":
        pem_chain = "".join(_pem(der) for der in chain)
        value = (
            f"By=spiffe://proxy.test/envoy;Hash={hashlib.sha256(leaf).hexdigest()};"
            f'Cert="{quote(_pem(leaf), safe="")}";Chain="{quote(pem_chain, safe="")}";'
            'Subject="CN=whatever,O=Quoted\\"Name";URI=spiffe://proxy.test/client'
        )
        # An earlier hop's element comes first; ours (the last) is the one read.
        return {"X-Forwarded-Client-Cert": f"By=spiffe://edge;Hash=00,{value}"}
    if header_format == "nginx":
        return {"X-SSL-Client-Cert": quote(_pem(leaf), safe="")}
    if header_format == "alb":
        # ALB leaves "+" (and "/", "=") unescaped: decoding must not turn "+" into a space.
        return {"X-Amzn-Mtls-Clientcert": quote("".join(_pem(d) for d in chain), safe="+/=")}
    if header_format == "traefik":
        return {
            "X-Forwarded-Tls-Client-Cert": ",".join(base64.b64encode(d).decode() for d in chain)
        }
    raise ValueError(header_format)


@dataclass
class ProxyPki:
    """Files and identities for proxy-mode tests."""

    directory: Path
    ca: CA
    intermediate: CA
    clients: dict[str, list[bytes]]  # name -> chain, leaf first, DER
    pinned_spki: str
    intermediate_spki: str

    @property
    def ca_file(self) -> str:
        return str(self.directory / "ca.pem")

    @property
    def crl_files(self) -> tuple[str, str]:
        return (str(self.directory / "ca.crl"), str(self.directory / "intermediate.crl"))

    def config(self, **overrides: Any) -> ServerConfig:
        settings: dict[str, Any] = {
            "client_ca": (self.ca_file,),
            "crl": self.crl_files,
            "pins": (self.pinned_spki, self.intermediate_spki),
            "client_cert_header": "nginx",
            "trusted_proxies": (f"{PROXY_IP}/32",),
            "bind": ("127.0.0.1:0",),
            "max_header_bytes": 256 * 1024,
        }
        settings.update(overrides)
        return ServerConfig(**settings)


def make_proxy_pki(directory: Path) -> ProxyPki:
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca = CA(name="proxy-test CA")
    inter = ca.create_intermediate(name="proxy-test intermediate")
    other = CA(name="another CA")
    # The pinned key is reused by every "bad" certificate below, so that each is refused for
    # its own fault, never for being unpinned.
    good = ca.issue_client("billing", uris=["spiffe://test.example/billing"])
    key = good.private_key
    revoked = ca.issue_client("revoked", key=key)
    stranger = ca.issue_client("stranger")
    ca.revoke(revoked)
    clients = {
        "good": [_der(good)],
        "unpinned": [_der(stranger)],
        "revoked": [_der(revoked)],
        "expired": [
            _der(
                ca.issue_client(
                    "expired", key=key, not_before=now - dt.timedelta(days=10),
                    not_after=now - dt.timedelta(days=1),
                )
            )
        ],
        "server-only": [_der(ca.issue_client("server-only", key=key, eku=("server",)))],
        "other-ca": [_der(other.issue_client("impostor", key=key))],
        "pin-on-intermediate": [_der(inter.issue_client("deep")), _der(inter)],
    }  # fmt: skip
    # Key files for real TLS clients (the nginx test): same-CA pinned, unpinned, revoked.
    for name, issued in (("good", good), ("unpinned", stranger), ("revoked", revoked)):
        issued.chain_pem.write_to_path(directory / f"{name}.pem")
        issued.private_key_pem().write_to_path(directory / f"{name}-key.pem")
    server = ca.issue_server("localhost", "127.0.0.1")
    server.chain_pem.write_to_path(directory / "server.pem")
    server.private_key_pem().write_to_path(directory / "server-key.pem")
    (directory / "ca.pem").write_bytes(ca.cert_pem.bytes() + inter.cert_pem.bytes())
    (directory / "ca.crl").write_bytes(ca.crl_pem().bytes())
    (directory / "intermediate.crl").write_bytes(inter.crl_pem().bytes())
    return ProxyPki(directory, ca, inter, clients, good.spki_pin, inter.spki_pin)


@pytest.fixture(autouse=True)
def _fresh_refusal_log() -> None:
    # The refusal log is per process and bounded per (peer, reason) and minute: each test
    # starts with fresh windows, so the lines it looks for are written.
    forwarded_refusals.reset()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ProxyPki:
    return make_proxy_pki(tmp_path_factory.mktemp("proxy-pki"))


@dataclass
class ProxyServer:
    """A proxy-mode server in a background thread."""

    port: int
    material: ProxyMaterial
    loop: asyncio.AbstractEventLoop

    def reload(self) -> bool:
        done = asyncio.run_coroutine_threadsafe(self._reload(), self.loop)
        return done.result(10)

    async def _reload(self) -> bool:
        return self.material.reload()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request_from(
    source_ip: str,
    port: int,
    headers: Mapping[str, str] | list[tuple[str, str]],
    *,
    method: str = "GET",
    path: str = "/whoami",
) -> Answer:
    """One plain HTTP/1.1 request whose TCP source address is ``source_ip``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source_ip, 0))
    try:
        conn.putrequest(method, path)
        for name, value in headers.items() if isinstance(headers, Mapping) else headers:
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return Answer(response.status, dict(response.getheaders()), response.read())
    finally:
        conn.close()


@contextlib.contextmanager
def running_proxy_server(
    config: ServerConfig, asgi_app: Any = app, *, sock: socket.socket | None = None
) -> Iterator[ProxyServer]:
    """Serve ``asgi_app`` in proxy mode on 127.0.0.1 (or ``sock``) in a background thread."""
    material = ProxyMaterial(config, on_refusal=log_refusal)
    if sock is None:
        sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    port = sock.getsockname()[1] if sock.family != socket.AF_UNIX else 0
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    failure: list[BaseException] = []

    def _run() -> None:
        try:
            loop.run_until_complete(
                serve_async(
                    asgi_app,
                    config,
                    sockets=[sock],
                    ready=ready.set,
                    material=material,
                    shutdown_trigger=stop.wait,
                )
            )
        except BaseException as exc:
            failure.append(exc)
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            ready.set()

    thread = threading.Thread(target=_run, name=f"proxy-server-{port}", daemon=True)
    thread.start()
    try:
        assert ready.wait(10), "proxy-mode server did not start"
        assert not failure, failure
        yield ProxyServer(port, material, loop)
    finally:
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        thread.join(15)
        sock.close()
        assert not thread.is_alive(), "proxy-mode server did not stop"
    assert not failure, failure


@pytest.fixture(scope="module")
def server(pki: ProxyPki) -> Iterator[ProxyServer]:
    with running_proxy_server(pki.config()) as running:
        yield running
