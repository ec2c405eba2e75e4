"""The proxy-facing listener (plain on a Unix socket, TLS, mTLS with the proxy pinned), the
proxy-mode settings, and reload."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from certs_tool import CA
from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.core._tls import create_client_context
from mtls_hooks.serving._config import ServerConfig
from tests.proxy.conftest import (
    DIRECT_IP,
    PROXY_IP,
    ProxyPki,
    encode,
    request_from,
    running_proxy_server,
)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(self._path)
        self.sock = sock


def _unix_get(path: str, headers: dict[str, str]) -> tuple[int, Any]:
    conn = _UnixConnection(path)
    try:
        conn.request("GET", "/whoami", headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("trusted", "status"),
    [pytest.param("unix", 200, id="unix-trusted"), pytest.param(f"{PROXY_IP}/32", 403, id="not")],
)
def test_unix_socket_listener(pki: ProxyPki, tmp_path: Path, trusted: str, status: int) -> None:
    path = str(tmp_path / "receiver.sock")
    config = pki.config(bind=(f"unix:{path}",), trusted_proxies=(trusted,))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen()
    with running_proxy_server(config, sock=sock):
        got, body = _unix_get(path, encode("nginx", pki.clients["good"]))
    assert got == status, body
    if status == 200:
        assert body["forwarded"] == {"proxy": "unix", "header": "nginx"}
    else:
        assert body["reason"] == "untrusted-proxy"


@pytest.fixture(scope="module")
def proxy_identities(pki: ProxyPki) -> dict[str, Path]:
    proxy_ca = CA(name="proxy CA")
    files = {"proxy-ca": pki.directory / "proxy-ca.pem"}
    proxy_ca.cert_pem.write_to_path(files["proxy-ca"])
    for name in ("proxy", "other-proxy"):
        issued = proxy_ca.issue_client(name)
        files[name] = pki.directory / f"{name}.pem"
        files[f"{name}-key"] = pki.directory / f"{name}-key.pem"
        issued.chain_pem.write_to_path(files[name])
        issued.private_key_pem().write_to_path(files[f"{name}-key"])
        files[f"{name}-pin"] = Path(issued.spki_pin)  # carried as a Path-typed string
    return files


def _tls_get(
    port: int, context: ssl.SSLContext, headers: dict[str, str], source_ip: str = PROXY_IP
) -> tuple[int, Any]:
    conn = http.client.HTTPSConnection(
        "localhost", port, context=context, timeout=10, source_address=(source_ip, 0)
    )
    try:
        conn.request("GET", "/whoami", headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_mtls_listener_admits_the_pinned_proxy_only(
    pki: ProxyPki, proxy_identities: dict[str, Path]
) -> None:
    config = pki.config(
        proxy_listener="mtls",
        certfile=str(pki.directory / "server.pem"),
        keyfile=str(pki.directory / "server-key.pem"),
        proxy_ca=(str(proxy_identities["proxy-ca"]),),
        proxy_pins=(str(proxy_identities["proxy-pin"]),),
        bind=("0.0.0.0:0",),
    )
    forwarded = encode("nginx", pki.clients["good"])
    with running_proxy_server(config) as server:

        def context(who: str) -> ssl.SSLContext:
            return create_client_context(
                ca_file=pki.ca_file,
                certfile=proxy_identities[who],
                keyfile=proxy_identities[f"{who}-key"],
            )

        status, body = _tls_get(server.port, context("proxy"), forwarded)
        assert status == 200, body
        # The handler sees the forwarded client, never the proxy's own certificate.
        assert body["spki"] == pki.pinned_spki
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _tls_get(server.port, context("other-proxy"), forwarded)


def test_tls_listener_serves_tls_and_still_checks_the_peer(pki: ProxyPki) -> None:
    config = pki.config(
        proxy_listener="tls",
        certfile=str(pki.directory / "server.pem"),
        keyfile=str(pki.directory / "server-key.pem"),
        bind=("0.0.0.0:0",),
    )
    context = create_client_context(ca_file=pki.ca_file)  # no client certificate
    with running_proxy_server(config) as server:
        status, body = _tls_get(server.port, context, encode("nginx", pki.clients["good"]))
        assert status == 200, body
        assert body["spki"] == pki.pinned_spki
        status, body = _tls_get(
            server.port, context, encode("nginx", pki.clients["good"]), DIRECT_IP
        )
        assert status == 403
        assert body["reason"] == "untrusted-proxy"
        with pytest.raises(ConnectionError):  # it is TLS: plain HTTP gets nowhere
            request_from(PROXY_IP, server.port, {})


def test_reload_applies_new_pins_at_once(pki: ProxyPki, tmp_path: Path) -> None:
    toml = tmp_path / "receiver.toml"

    def write(pins: list[str]) -> None:
        toml.write_text(
            f'client_ca = ["{pki.ca_file}"]\ncrl = {json.dumps(list(pki.crl_files))}\n'
            f'client_cert_header = "nginx"\ntrusted_proxies = ["{PROXY_IP}/32"]\n'
            f'bind = ["127.0.0.1:0"]\npins = {json.dumps(pins)}\n'
        )

    write([pki.pinned_spki])
    good = encode("nginx", pki.clients["good"])
    with running_proxy_server(ServerConfig.load(config_file=toml, environ={})) as server:
        assert request_from(PROXY_IP, server.port, good).status == 200  # cached now
        write([pki.intermediate_spki])
        assert server.reload()
        answer = request_from(PROXY_IP, server.port, good)
        assert answer.status == 403
        assert answer.json()["reason"] == "unpinned"
        toml.write_text("client_ca = [")  # a broken file keeps the old rules
        assert not server.reload()
        assert request_from(PROXY_IP, server.port, good).status == 403


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param({"trusted_proxies": ()}, "trusted_proxies is empty", id="no-trusted"),
        pytest.param({"trusted_proxies": ("10.0.0.1/8",)}, "not a CIDR network", id="host-bits"),
        pytest.param({"client_cert_header": "ngnix"}, "did you mean 'nginx'", id="typo"),
        pytest.param({"bind": ("0.0.0.0:8080",)}, "loopback addresses", id="plain-public"),
        pytest.param({"proxy_listener": "mtls"}, "needs proxy_ca and proxy_pins", id="mtls"),
        pytest.param({"proxy_listener": "tls"}, "certfile and keyfile", id="tls-no-cert"),
        pytest.param({"proxy_listener": "ssl"}, "proxy_listener must be", id="listener"),
        pytest.param({"proxy_pins": ("sha256/x",)}, "need proxy_listener 'mtls'", id="pins"),
        pytest.param(
            {"client_cert_header": None}, "trusted_proxies is set but", id="no-proxy-mode"
        ),
    ],
)
def test_proxy_settings_fail_closed(pki: ProxyPki, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        pki.config(**overrides)


def test_plain_proxy_mode_needs_no_server_certificate(pki: ProxyPki) -> None:
    config = ServerConfig.load(
        environ={},
        overrides={
            "client_ca": [pki.ca_file],
            "pins": [pki.pinned_spki],
            "client_cert_header": "xfcc",
            "trusted_proxies": ["127.0.0.1/32", "::1/128"],
            "bind": ["127.0.0.1:8080", "[::1]:8080"],
        },
    )
    assert config.proxy_mode
    assert not config.serves_tls
    config.check_files()
    with pytest.raises(ConfigurationError, match="missing required"):
        ServerConfig.load(environ={}, overrides={"client_ca": [pki.ca_file], "pins": ["x"]})


def test_cli_flags_reach_the_config(pki: ProxyPki) -> None:
    import argparse

    from mtls_hooks.cli import _serve

    parser = argparse.ArgumentParser()
    _serve.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["serve", "m:app", "--client-ca", pki.ca_file, "--pin", pki.pinned_spki,
         "--client-cert-header", "traefik", "--trusted-proxy", f"{PROXY_IP}/32",
         "--bind", "127.0.0.1:0"]
    )  # fmt: skip
    overrides = {name: getattr(args, name) for name in _serve._OVERRIDES}
    config = ServerConfig.load(environ={}, overrides=overrides)
    assert config.client_cert_header == "traefik"
    assert config.trusted_proxies == (f"{PROXY_IP}/32",)


def test_direct_ip_is_really_untrusted(pki: ProxyPki) -> None:
    # The premise of the spoofing tests: 127.0.0.1 is not 127.0.0.2/32.
    with running_proxy_server(pki.config()) as server:
        good = encode("nginx", pki.clients["good"])
        assert request_from(DIRECT_IP, server.port, good).status == 403
        assert request_from(PROXY_IP, server.port, good).status == 200


@pytest.mark.slow
def test_workers_each_enforce_proxy_mode(pki: ProxyPki) -> None:
    from mtls_hooks.testing import running_server_process

    good = encode("nginx", pki.clients["good"])
    with running_server_process("tests.proxy.conftest:app", pki.config(), workers=2) as server:
        assert len(server.worker_pids) == 2
        # Several connections, so both workers take some; every one applies the same rules.
        for _ in range(6):
            assert request_from(PROXY_IP, server.port, good).status == 200
            assert request_from(DIRECT_IP, server.port, good).status == 403


def test_watch_reloads_when_a_file_changes(pki: ProxyPki, tmp_path: Path) -> None:
    import asyncio
    import os

    from mtls_hooks.serving._forwarded import ProxyMaterial, make_material

    toml = tmp_path / "receiver.toml"
    base = (
        f'client_ca = ["{pki.ca_file}"]\nclient_cert_header = "nginx"\n'
        f'trusted_proxies = ["{PROXY_IP}/32"]\nbind = ["127.0.0.1:0"]\nwatch_interval_s = 0.05\n'
    )
    toml.write_text(base + f'pins = ["{pki.pinned_spki}"]\n')
    material = make_material(ServerConfig.load(config_file=toml, environ={}), on_refusal=None)
    assert isinstance(material, ProxyMaterial)
    assert material.listening_context is None
    assert not material.check_files()  # nothing changed
    toml.write_text(base + f'pins = ["{pki.intermediate_spki}"]\n')
    os.utime(toml, ns=(1, 1))  # a different mtime even within the filesystem's resolution

    async def watch_once() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(material.watch(stop))
        for _ in range(200):  # bounded: until the watcher has reloaded
            if material.state.generation == 1:
                break
            await asyncio.sleep(0.02)
        stop.set()
        await task
        remove = material.install_signal_handler(asyncio.get_running_loop())
        remove()

    asyncio.run(watch_once())
    assert material.state.generation == 1
    assert material.state.verifier.policy.spki_pins == {pki.intermediate_spki}
    assert material.reload_count == 1
