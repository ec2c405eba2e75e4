"""Concurrent connections from different identities never see each other's identity.

The server runs in its own process so that it has a core of its own: 300 simultaneous
handshakes from an in-process client would otherwise share one GIL with the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from mtls_hooks.testing import ProcessHandle, running_server_process
from tests.serving.conftest import H1, H2, Cast, Identity, Pki

REQUESTS_PER_IDENTITY = 100
DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def server_process(pki: Pki, cast: Cast) -> Iterator[ProcessHandle]:
    config = pki.config(cast.alpha, cast.beta, cast.gamma, handshake_timeout_s=30.0)
    with running_server_process("tests.serving.apps:app", config) as handle:
        yield handle


async def _burst(server: ProcessHandle, pki: Pki, identity: Identity, http2: bool) -> list[str]:
    """Send REQUESTS_PER_IDENTITY concurrent requests as ``identity``; return mismatches."""
    limits = httpx.Limits(max_connections=REQUESTS_PER_IDENTITY)
    async with httpx.AsyncClient(
        verify=pki.context(identity, http2=http2), http2=http2, limits=limits, timeout=30.0
    ) as client:

        async def one(i: int) -> str | None:
            response = await client.post(
                server.url("/whoami"),
                content=f"{identity.name}-{i}".encode() * 16,
                headers={"x-caller": identity.name},
            )
            body = response.json()
            if response.status_code != 200 or body["subject"] != f"CN={identity.name}":
                return f"{identity.name} #{i}: {response.status_code} {body}"
            if body["caller"] != identity.name or body["spki"] != identity.spki_pin:
                return f"{identity.name} #{i}: saw {body['caller']} / {body['spki']}"
            return None

        results = await asyncio.gather(*(one(i) for i in range(REQUESTS_PER_IDENTITY)))
    return [r for r in results if r is not None]


@pytest.mark.slow
@pytest.mark.parametrize("http2", [H1, H2])
def test_three_identities_concurrently(
    server_process: ProcessHandle, pki: Pki, cast: Cast, http2: bool
) -> None:
    identities = (cast.alpha, cast.beta, cast.gamma)

    async def run() -> list[list[str]]:
        bursts = (_burst(server_process, pki, identity, http2) for identity in identities)
        return await asyncio.wait_for(asyncio.gather(*bursts), DEADLINE_S)

    mismatches = asyncio.run(run())
    assert mismatches == [[], [], []]
