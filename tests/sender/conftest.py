"""Fixtures for the sender tests: a PKI on disk, a fake clock, and a runner for both twins."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tenacity import stop_after_attempt

from certs_tool import CA
from mtls_hooks.core._tls import create_server_context
from mtls_hooks.sender._async import AsyncWebhookSender
from mtls_hooks.sender._results import DeliveryResult
from mtls_hooks.sender._retry import RetryPolicy, wait_backoff, wait_retry_after
from mtls_hooks.sender._sync import WebhookSender
from tests.sender.scripted import Action, ScriptedServer, scripted_server

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PASSPHRASE = b"correct horse"


@dataclass(frozen=True)
class SenderPki:
    """A CA, a server identity and client identities in every format, as files."""

    directory: Path
    ca: CA
    server_pin: str
    client_pin: str

    def path(self, name: str) -> Path:
        return self.directory / name

    @property
    def ca_file(self) -> Path:
        return self.path("ca.pem")

    def server_context(self) -> ssl.SSLContext:
        """The receiver side: our server context, client certificates from ``ca`` required."""
        return create_server_context(
            certfile=self.path("server.pem"),
            keyfile=self.path("server.key"),
            client_ca=[self.ca_file],
            peer_policy=None,
        )

    def client(self, form: str = "pem") -> dict[str, Any]:
        """Sender TLS arguments for a client identity in ``form``: pem, encrypted, pkcs12."""
        if form == "pkcs12":
            return {"ca_file": self.ca_file, "pkcs12_file": self.path("client.p12"),
                    "key_password": PASSPHRASE}  # fmt: skip
        key = "client.key" if form == "pem" else "client-encrypted.key"
        password = PASSPHRASE if form == "encrypted" else None
        return {"ca_file": self.ca_file, "certfile": self.path("client.pem"),
                "keyfile": self.path(key), "key_password": password}  # fmt: skip


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> SenderPki:
    directory = tmp_path_factory.mktemp("sender-pki")
    ca = CA(name="sender test CA")
    server = ca.issue_server("localhost", "127.0.0.1")
    client = ca.issue_client(common_name="sender")
    ca.cert_pem.write_to_path(directory / "ca.pem")
    server.chain_pem.write_to_path(directory / "server.pem")
    server.private_key_pem().write_to_path(directory / "server.key")
    client.chain_pem.write_to_path(directory / "client.pem")
    client.private_key_pem().write_to_path(directory / "client.key")
    client.private_key_pem(passphrase=PASSPHRASE).write_to_path(directory / "client-encrypted.key")
    client.pkcs12(PASSPHRASE).write_to_path(directory / "client.p12")
    now = dt.datetime.now(dt.UTC)
    expired = ca.issue_client(
        common_name="expired",
        not_before=now - dt.timedelta(days=30),
        not_after=now - dt.timedelta(days=1),
    )
    expired.chain_pem.write_to_path(directory / "expired.pem")
    expired.private_key_pem().write_to_path(directory / "expired.key")
    other = CA(name="some other CA")
    other.cert_pem.write_to_path(directory / "other-ca.pem")
    return SenderPki(directory, ca, server.spki_pin, client.spki_pin)


@dataclass
class FakeTime:
    """A wall clock and a monotonic clock that only ``sleep`` moves; sleeps are recorded."""

    now: float = field(default_factory=lambda: float(int(dt.datetime.now(dt.UTC).timestamp())))
    elapsed: float = 0.0
    sleeps: list[float] = field(default_factory=list)

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.elapsed

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        self.elapsed += seconds

    def advance(self, seconds: float) -> None:
        """Move both clocks without a recorded sleep: time passing while a try runs."""
        self.now += seconds
        self.elapsed += seconds

    def kwargs(self) -> dict[str, Any]:
        return {"clock": self.time, "monotonic": self.monotonic, "sleep": self.sleep}


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


def exact_policy(**changes: Any) -> RetryPolicy:
    """Waits of exactly 1, 2, 4, 8... s (no jitter), Retry-After up to 120 s, 5 tries."""
    policy = RetryPolicy(
        stop=stop_after_attempt(5),
        wait=wait_retry_after(
            wait_backoff(initial_s=1, multiplier=2, max_s=60, jitter=0), max_s=120
        ),
        attempt_timeout_s=5,
        deadline_s=300,
    )
    return policy.replace(**changes)


def exact_kwargs(pki: SenderPki, fake_time: FakeTime, **policy: object) -> dict[str, Any]:
    """Sender arguments: the PEM client, the fake clocks and :func:`exact_policy`."""
    return {"signing_keys": SECRET, **pki.client(), **fake_time.kwargs(),
            "retry": exact_policy(**policy)}  # fmt: skip


KINDS = [pytest.param("sync", id="sync"), pytest.param("async", id="async")]


def deliver(
    kind: str, sender_kwargs: dict[str, Any], url: str, payload: object, **send: Any
) -> DeliveryResult:
    """Build the ``kind`` twin, send once, close it; raises what ``send`` raises."""
    if kind == "sync":
        with WebhookSender(**sender_kwargs) as sender:
            return sender.send(url, payload, **send)

    async def main() -> DeliveryResult:
        async with AsyncWebhookSender(**sender_kwargs) as sender:
            return await sender.send(url, payload, **send)

    return asyncio.run(main())


@pytest.fixture
def serve(pki: SenderPki) -> Iterator[Callable[..., ScriptedServer]]:
    """Start scripted servers (our server context unless one is given); stopped at teardown."""
    with contextlib.ExitStack() as stack:

        def start(script: list[Action], context: ssl.SSLContext | None = None) -> ScriptedServer:
            server: ScriptedServer = stack.enter_context(
                scripted_server(context or pki.server_context(), script)
            )
            return server

        yield start
