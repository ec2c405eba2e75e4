"""Several worker processes, each keeping every guarantee: pinning, tls extension, reload."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from mtls_hooks.testing import ProcessHandle, running_server_process
from tests.serving.conftest import Identity, Pki

APP = "tests.serving.apps:app"
BATCH = 16  # concurrent new connections, so that both workers get some
MAX_BATCHES = 25
Body = dict[str, Any]


async def _by_worker(
    server: ProcessHandle, pki: Pki, identity: Identity, wanted: Callable[[Body], bool]
) -> dict[int, Body]:
    """New connections until every worker has answered with a body ``wanted`` accepts."""

    async def one() -> Body:
        async with httpx.AsyncClient(verify=pki.context(identity), timeout=10.0) as client:
            response = await client.get(server.url("/whoami"))
        assert response.status_code == 200
        body: Body = response.json()
        return body

    seen: dict[int, Body] = {}
    for _ in range(MAX_BATCHES):
        for body in await asyncio.gather(*(one() for _ in range(BATCH))):
            if wanted(body):
                seen.setdefault(body["pid"], body)
        if set(seen) >= set(server.worker_pids):
            return seen
    raise AssertionError(f"only workers {sorted(seen)} of {server.worker_pids} answered")


def _tcp_refused(exc: BaseException) -> bool:
    """True when ``exc`` comes from a refused TCP connect: no server, not a TLS refusal."""
    seen: BaseException | None = exc
    for _ in range(10):  # bounded walk of the cause chain
        if seen is None:
            return False
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def _all_refused(server: ProcessHandle, pki: Pki, identity: Identity) -> bool:
    async def one() -> bool:
        try:
            async with httpx.AsyncClient(verify=pki.context(identity), timeout=10.0) as client:
                await client.get(server.url("/whoami"))
        except httpx.TransportError as exc:
            # Dropped after the TLS handshake (the worker's refusal), not "nobody listening".
            return not _tcp_refused(exc)
        except ssl.SSLError:  # a TLS alert, which httpx's anyio backend does not wrap
            return True
        return False

    return all(await asyncio.gather(*(one() for _ in range(BATCH))))


def _der(pem: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem)


@pytest.mark.slow
def test_two_workers_pin_tag_and_reload_on_sighup(fresh_pki: Pki) -> None:
    pki = fresh_pki
    alpha, stranger = pki.identity("alpha"), pki.identity("stranger")
    config = pki.config(alpha)
    with running_server_process(APP, config, workers=2) as server:
        assert len(set(server.worker_pids)) == 2
        assert server.pid not in server.worker_pids

        bodies = asyncio.run(_by_worker(server, pki, alpha, lambda body: True))
        for body in bodies.values():
            assert body["subject"] == "CN=alpha"
            assert len(body["tls_keys"]) == 6
        assert asyncio.run(_all_refused(server, pki, stranger))

        old = _der(pki.server.cert_pem.bytes().decode())
        pki.write_server(pki.ca.issue_server("localhost", "127.0.0.1", "::1"))
        new = _der(pki.server.cert_pem.bytes().decode())
        server.reload()  # SIGHUP to the supervisor, forwarded to each worker by PID
        rotated = asyncio.run(
            _by_worker(server, pki, alpha, lambda body: _der(body["server_cert"]) == new)
        )
        assert set(rotated) == set(server.worker_pids)
        assert new != old
    for pid in server.worker_pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.slow
def test_a_dying_worker_fails_the_server(fresh_pki: Pki) -> None:
    alpha = fresh_pki.identity("alpha")
    with running_server_process(APP, fresh_pki.config(alpha), workers=2) as server:
        os.kill(server.worker_pids[0], signal.SIGKILL)
        assert server.wait(20.0) == 1
