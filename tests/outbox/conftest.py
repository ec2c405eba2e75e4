"""Fixtures for the outbox tests: a PKI on disk, a recording receiver over real mTLS, stores."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from certs_tool import CA, IssuedCert
from mtls_hooks.core._keys_signing import HmacSecret
from mtls_hooks.outbox import Endpoint, RetrySettings
from mtls_hooks.serving._config import ServerConfig
from mtls_hooks.testing import running_server
from tests.outbox.receiver_app import build_app, read_log
from tests.queue.conftest import FakeClock, pg_schema

__all__ = ["FakeClock", "OutboxPki", "Receiver", "fast_retry"]


@dataclass(frozen=True)
class OutboxPki:
    """CA, receiver and client identities as files, and a signing key file."""

    directory: Path
    ca: CA
    server: IssuedCert
    client: IssuedCert
    secret: str

    def path(self, name: str) -> str:
        return str(self.directory / name)

    def endpoint(self, name: str, url: str, **options: Any) -> Endpoint:
        options.setdefault("pins", (self.server.spki_pin,))
        return Endpoint(
            name=name,
            url=url,
            ca_file=self.path("ca.pem"),
            cert_file=self.path("client.pem"),
            key_file=self.path("client.key"),
            signing_keys=(f"file:{self.path('keys.txt')}",),
            **options,
        )

    def server_config(self, *clients: IssuedCert) -> ServerConfig:
        return ServerConfig(
            certfile=self.path("server.pem"),
            keyfile=self.path("server.key"),
            client_ca=(self.path("ca.pem"),),
            pins=tuple(c.spki_pin for c in clients or (self.client,)),
        )


def fast_retry(**changes: Any) -> RetrySettings:
    """Exact, short waits: the tests drive time or need none."""
    values: dict[str, Any] = {
        "max_attempts": 3,
        "initial_wait_s": 0.0,
        "multiplier": 1.0,
        "jitter": 0.0,
        "max_retry_after_s": 0.5,
        "attempt_timeout_s": 10.0,
    }
    return RetrySettings(**{**values, **changes})


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> OutboxPki:
    directory = tmp_path_factory.mktemp("outbox-pki")
    ca = CA(name="outbox test CA")
    server = ca.issue_server("localhost", "127.0.0.1")
    client = ca.issue_client(common_name="outbox-sender")
    ca.cert_pem.write_to_path(directory / "ca.pem")
    server.chain_pem.write_to_path(directory / "server.pem")
    server.private_key_pem().write_to_path(directory / "server.key")
    client.chain_pem.write_to_path(directory / "client.pem")
    client.private_key_pem().write_to_path(directory / "client.key")
    secret = HmacSecret.generate().export()
    (directory / "keys.txt").write_text(f"# the outbox signing key\n{secret}\n")
    return OutboxPki(directory, ca, server, client, secret)


@dataclass(frozen=True)
class Receiver:
    """A recording receiver served in this process."""

    base: str
    log: Path

    def url(self, path: str = "/hooks") -> str:
        return f"{self.base}{path}"

    def seen(self) -> dict[str, list[str]]:
        return read_log(self.log)


@pytest.fixture
def receiver(pki: OutboxPki, tmp_path: Path) -> Iterator[Receiver]:
    log = tmp_path / "receiver.log"
    app = build_app(pki.secret, log)
    with running_server(app, pki.server_config()) as server:
        yield Receiver(f"https://localhost:{server.port}", log)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "memory":
        yield "memory://"
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'outbox.sqlite3'}?synchronous=normal"
    else:
        with pg_schema() as url:
            yield url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
