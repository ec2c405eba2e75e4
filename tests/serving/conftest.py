"""Fixtures for the serving tests: a PKI on disk, client contexts, a running server."""

from __future__ import annotations

import datetime as dt
import logging
import ssl
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from certs_tool import CA, IssuedCert
from mtls_hooks.core._tls import create_client_context
from mtls_hooks.serving._config import ServerConfig
from mtls_hooks.testing import ServerHandle, running_server
from tests.serving.apps import BILLING_SPIFFE_ID, app

H1 = pytest.param(False, id="http1.1")
H2 = pytest.param(True, id="http2")


@dataclass(frozen=True)
class Identity:
    """A client certificate and key written to disk."""

    name: str
    cert: str
    key: str
    issued: IssuedCert

    @property
    def spki_pin(self) -> str:
        return self.issued.spki_pin

    def context(self, ca_file: str, *, http2: bool = False) -> ssl.SSLContext:
        """A client context presenting this identity and trusting ``ca_file``."""
        return create_client_context(
            ca_file=ca_file,
            certfile=self.cert,
            keyfile=self.key,
            alpn_protocols=("h2", "http/1.1") if http2 else ("http/1.1",),
        )


@dataclass
class Pki:
    """A CA, a server certificate and client identities, as files under ``directory``."""

    directory: Path
    ca: CA
    server: IssuedCert

    @property
    def ca_file(self) -> str:
        return str(self.directory / "ca.pem")

    @property
    def server_cert(self) -> str:
        return str(self.directory / "server.pem")

    @property
    def server_key(self) -> str:
        return str(self.directory / "server.key")

    @property
    def crl_file(self) -> str:
        return str(self.directory / "crl.pem")

    @classmethod
    def create(cls, directory: Path, ca: CA | None = None) -> Pki:
        ca = ca or CA()
        pki = cls(directory, ca, ca.issue_server("localhost", "127.0.0.1", "::1"))
        ca.cert_pem.write_to_path(pki.ca_file)
        pki.write_server(pki.server)
        pki.write_crl()
        return pki

    def write_server(self, server: IssuedCert) -> None:
        self.server = server
        server.cert_pem.write_to_path(self.server_cert, force=True)
        server.private_key_pem().write_to_path(self.server_key, force=True)

    def write_crl(self) -> None:
        self.ca.crl_pem().write_to_path(self.crl_file, force=True)

    def identity(self, name: str, issued: IssuedCert | None = None, **kwargs: Any) -> Identity:
        issued = issued or self.ca.issue_client(name, **kwargs)
        cert = self.directory / f"{name}.pem"
        key = self.directory / f"{name}.key"
        issued.cert_pem.write_to_path(cert, force=True)
        issued.private_key_pem().write_to_path(key, force=True)
        return Identity(name, str(cert), str(key), issued)

    def config(self, *pinned: Identity, **overrides: Any) -> ServerConfig:
        settings: dict[str, Any] = {
            "certfile": self.server_cert,
            "keyfile": self.server_key,
            "client_ca": (self.ca_file,),
            "pins": tuple(i.spki_pin for i in pinned),
            "handshake_timeout_s": 5.0,
            "graceful_timeout_s": 2.0,
        }
        settings.update(overrides)
        return ServerConfig.from_mapping(settings)

    def context(self, identity: Identity, *, http2: bool = False) -> ssl.SSLContext:
        return identity.context(self.ca_file, http2=http2)


@dataclass(frozen=True)
class Cast:
    """The session's identities: three pinned, one unpinned, one billing, failing twins."""

    alpha: Identity
    beta: Identity
    gamma: Identity
    billing: Identity
    stranger: Identity  # same CA, not pinned
    outsider: Identity  # another CA
    expired: Identity
    revoked: Identity
    server_only: Identity  # serverAuth EKU only


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory, certs_ca: CA) -> Pki:
    """The session PKI (shared, read-only: tests that mutate files build their own)."""
    return Pki.create(tmp_path_factory.mktemp("pki"), certs_ca)


@pytest.fixture(scope="session")
def cast(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Cast:
    now = dt.datetime.now(dt.UTC)
    other = Pki.create(tmp_path_factory.mktemp("other-pki"))
    revoked = pki.identity("revoked")
    pki.ca.revoke(revoked.issued)
    pki.write_crl()
    return Cast(
        alpha=pki.identity("alpha"),
        beta=pki.identity("beta"),
        gamma=pki.identity("gamma"),
        billing=pki.identity("billing", uris=[BILLING_SPIFFE_ID]),
        stranger=pki.identity("stranger"),
        outsider=other.identity("outsider"),
        expired=pki.identity(
            "expired", not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)
        ),
        revoked=revoked,
        server_only=pki.identity("server-only", eku=["server"]),
    )


def pinned_everyone(cast: Cast) -> tuple[Identity, ...]:
    """Every identity that fails only for its own reason is pinned, so the pin never masks it."""
    return (
        cast.alpha,
        cast.beta,
        cast.gamma,
        cast.billing,
        cast.outsider,
        cast.expired,
        cast.revoked,
        cast.server_only,
    )


@pytest.fixture
def fresh_pki(tmp_path: Path) -> Pki:
    """A PKI of its own, for tests that rewrite certificates, keys and CRLs."""
    return Pki.create(tmp_path)


@pytest.fixture(scope="module")
def server(pki: Pki, cast: Cast) -> Iterator[ServerHandle]:
    """The Quart test app served with every identity but ``stranger`` pinned, CRL on."""
    config = pki.config(*pinned_everyone(cast), crl=(pki.crl_file,))
    with running_server(app, config) as handle:
        yield handle


class LogCollector(logging.Handler):
    """Collects formatted records of one logger from any thread; signals on a match."""

    def __init__(self, logger: str, wake_on: str = "") -> None:
        super().__init__(logging.DEBUG)
        self.logger = logging.getLogger(logger)
        self.lines: list[str] = []
        self.wake_on = wake_on
        self.matched = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        self.lines.append(line)
        if self.wake_on and self.wake_on in line:
            self.matched.set()

    def __enter__(self) -> LogCollector:
        self.logger.addHandler(self)
        self._level = self.logger.level
        self.logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self._level)


def tls11_context(identity: Identity, ca_file: str) -> ssl.SSLContext:
    """A client context that offers only TLS 1.1 (deprecated on purpose)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca_file)
    context.load_cert_chain(identity.cert, identity.key)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the point of this context
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    return context
