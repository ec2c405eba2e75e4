"""Rotation without restart: new handshakes get new material, nothing accepted is dropped."""

from __future__ import annotations

import asyncio
import collections
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from mtls_hooks.serving._config import ServerConfig
from mtls_hooks.testing import ServerHandle, running_server
from tests.serving.apps import app
from tests.serving.conftest import Identity, LogCollector, Pki

MAX_REQUESTS_PER_WORKER = 400  # bounds the load even if an event never fires
PHASE_TIMEOUT_S = 20.0


def _der(pem: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem)


@dataclass
class Load:
    """Bookkeeping of a load run: every failure is kept, every success counted."""

    url: str
    context: ssl.SSLContext
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    failures: list[str] = field(default_factory=list)
    ok: collections.Counter[str] = field(default_factory=collections.Counter)
    reloaded: bool = False
    certs_after_reload: list[bytes] = field(default_factory=list)
    progress: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def _count(self, kind: str) -> None:
        self.ok[kind] += 1
        async with self.progress:
            self.progress.notify_all()

    async def wait_for(self, kind: str, count: int) -> None:
        async with self.progress:
            await asyncio.wait_for(
                self.progress.wait_for(lambda: self.ok[kind] >= count), PHASE_TIMEOUT_S
            )

    async def keep_alive(self) -> None:
        async with httpx.AsyncClient(verify=self.context, timeout=10.0) as client:
            for _ in range(MAX_REQUESTS_PER_WORKER):
                if self.stop.is_set():
                    return
                try:
                    response = await client.post(self.url, content=b"k" * 1024)
                except httpx.HTTPError as exc:
                    self.failures.append(f"keep-alive: {exc!r}")
                    return
                if response.status_code != 200:
                    self.failures.append(f"keep-alive: {response.status_code}")
                await self._count("keep-alive")

    async def new_connections(self) -> None:
        for _ in range(MAX_REQUESTS_PER_WORKER):
            if self.stop.is_set():
                return
            started_after_reload = self.reloaded
            try:
                async with httpx.AsyncClient(verify=self.context, timeout=10.0) as client:
                    response = await client.get(self.url)
            except httpx.HTTPError as exc:
                self.failures.append(f"new connection: {exc!r}")
                return
            if response.status_code != 200:
                self.failures.append(f"new connection: {response.status_code}")
            if started_after_reload:
                self.certs_after_reload.append(_der(response.json()["server_cert"]))
                await self._count("new-after-reload")
            await self._count("new")


@pytest.mark.slow
def test_rotate_server_cert_and_revoke_client_under_load(fresh_pki: Pki) -> None:
    pki = fresh_pki
    alpha, beta = pki.identity("alpha"), pki.identity("beta")
    config = pki.config(alpha, beta, crl=(pki.crl_file,))
    old_cert = _der(pki.server.cert_pem.bytes().decode())

    async def scenario(server: ServerHandle) -> Load:
        load = Load(server.url("/whoami"), pki.context(alpha))
        workers = [asyncio.create_task(load.keep_alive()) for _ in range(4)]
        workers += [asyncio.create_task(load.new_connections()) for _ in range(2)]
        async with httpx.AsyncClient(verify=pki.context(beta)) as beta_established:
            assert (await beta_established.get(load.url)).status_code == 200
            await load.wait_for("keep-alive", 40)

            pki.write_server(pki.ca.issue_server("localhost", "127.0.0.1", "::1"))
            pki.ca.revoke(beta.issued)
            pki.write_crl()
            assert await asyncio.to_thread(server.reload)
            load.reloaded = True
            before = load.ok["keep-alive"]

            await load.wait_for("new-after-reload", 5)
            await load.wait_for("keep-alive", before + 40)
            # Established connections keep working, even the one whose client is now revoked
            # (revocation applies to handshakes; restart or drain to cut live sessions).
            assert (await beta_established.get(load.url)).status_code == 200
        # httpx's anyio backend passes a TLS alert through as ssl.SSLError, unwrapped.
        with pytest.raises((httpx.TransportError, ssl.SSLError)) as caught:
            async with httpx.AsyncClient(verify=pki.context(beta)) as beta_again:
                await beta_again.get(load.url)
        if isinstance(caught.value, ssl.SSLError):
            assert caught.value.reason == "SSLV3_ALERT_CERTIFICATE_REVOKED", caught.value
        load.stop.set()
        await asyncio.wait_for(asyncio.gather(*workers), PHASE_TIMEOUT_S)
        return load

    with LogCollector("mtls_hooks.tls") as refusals, running_server(app, config) as server:
        load = asyncio.run(scenario(server))
        assert server.material.current.generation == 1
    assert load.failures == []
    new_cert = _der(pki.server.cert_pem.bytes().decode())
    assert load.certs_after_reload
    assert set(load.certs_after_reload) == {new_cert} != {old_cert}
    assert any("reason=cert-verify-failed" in line and "revoked" in line for line in refusals.lines)


def _probe(server: ServerHandle, pki: Pki, identity: Identity, *, http2: bool = False) -> bytes:
    with httpx.Client(verify=pki.context(identity, http2=http2), http2=http2) as client:
        response = client.get(server.url("/whoami"))
    assert response.status_code == 200
    assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    return _der(response.json()["server_cert"])


def test_failed_reload_keeps_old_material(fresh_pki: Pki, tmp_path: Path) -> None:
    pki = fresh_pki
    alpha = pki.identity("alpha")
    config = pki.config(alpha, crl=(pki.crl_file,))
    old_cert = _der(pki.server.cert_pem.bytes().decode())
    good_key = Path(pki.server_key).read_bytes()
    with LogCollector("mtls_hooks.reload") as log, running_server(app, config) as server:
        # A new certificate whose key has not been written yet: half a rotation.
        pki.ca.issue_server("localhost", "127.0.0.1").cert_pem.write_to_path(
            pki.server_cert, force=True
        )
        assert server.reload() is False
        assert server.material.current.generation == 0
        assert _probe(server, pki, alpha) == old_cert
        assert "event=reload_failed" in log.lines[-1]
        assert "does not match" in log.lines[-1]
        assert "PRIVATE" not in log.lines[-1]

        Path(pki.crl_file).unlink()
        pki.write_server(pki.server)  # cert and key consistent again, but no CRL
        assert server.reload() is False
        assert "cannot read CRL" in log.lines[-1]
        assert _probe(server, pki, alpha) == old_cert

        pki.write_crl()
        assert Path(pki.server_key).read_bytes() == good_key
        assert server.reload() is True
        assert server.material.current.generation == 1
        assert "event=reloaded" in log.lines[-1]
        assert _probe(server, pki, alpha, http2=True) == old_cert  # ALPN survives the swap


@pytest.fixture
def toml_config(fresh_pki: Pki) -> tuple[Path, Identity, Identity]:
    alpha, beta = fresh_pki.identity("alpha"), fresh_pki.identity("beta")
    path = fresh_pki.directory / "receiver.toml"
    return path, alpha, beta


def _write_pins(path: Path, *identities: Identity) -> None:
    pins = ", ".join(f"'{i.spki_pin}'" for i in identities)
    path.write_text(
        "[server]\ncertfile = 'server.pem'\nkeyfile = 'server.key'\nclient_ca = ['ca.pem']\n"
        f"pins = [{pins}]\nwatch_files = true\nwatch_interval_s = 0.1\n"
        "graceful_timeout_s = 2\n",
        encoding="utf-8",
    )


def _refused(server: ServerHandle, pki: Pki, identity: Identity) -> bool:
    """True when the handshake refused ``identity`` for its pin (the server says so)."""
    refusal = f'reason=unpinned subject="CN={identity.name}" spki={identity.spki_pin} '
    with LogCollector("mtls_hooks.tls", wake_on=refusal) as log:
        try:
            _probe(server, pki, identity)
        except httpx.TransportError:
            pass  # a drop alone could be anything: the refusal line must name this client
        else:
            return False
        assert log.matched.wait(10.0), log.lines
    [line] = [line for line in log.lines if f" spki={identity.spki_pin} " in line]
    assert " reason=unpinned " in line
    return True


def test_watch_reloads_pins_from_the_config_file(
    fresh_pki: Pki, toml_config: tuple[Path, Identity, Identity]
) -> None:
    path, alpha, beta = toml_config
    _write_pins(path, alpha)
    config = ServerConfig.from_toml(path)
    assert config.watch_files
    with running_server(app, config) as server:
        assert _refused(server, fresh_pki, beta)
        with LogCollector("mtls_hooks.reload", wake_on="event=reloaded") as log:
            _write_pins(path, beta)  # add beta, drop alpha
            assert log.matched.wait(10.0), log.lines
        assert not _refused(server, fresh_pki, beta)
        assert _refused(server, fresh_pki, alpha)
        assert server.material.current.config.pins == (beta.spki_pin,)
