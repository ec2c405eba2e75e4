"""Real processes for the inbox tests: ``mtls-hooks serve`` and ``mtls-hooks process-inbox``
on ``tests.inbox.inbox_app:app``, a PKI on disk, and our sender over real mTLS.

Processes are the outbox tests' :class:`~tests.outbox.processes.Child`: output read on a
thread, every wait bounded, stopped by PID.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenacity import stop_after_attempt

from certs_tool import CA, IssuedCert
from mtls_hooks import RetryPolicy, WebhookSender
from mtls_hooks.core._keys_signing import HmacSecret
from mtls_hooks.core._tls import create_client_context
from tests.inbox.inbox_app import Record, read_records
from tests.outbox.processes import CLI, Child, wait_until

__all__ = ["CLI", "Child", "Node", "RealPki", "serve", "start_worker", "wait_until"]

APP = "tests.inbox.inbox_app:app"
SPIFFE_SENDER = "spiffe://test.example/orders/sender"


@dataclass(frozen=True)
class RealPki:
    """A CA, the server, a pinned sender and an unpinned stranger, as files; a signing key."""

    directory: Path
    ca: CA
    server: IssuedCert
    client: IssuedCert
    stranger: IssuedCert
    secret: str

    @classmethod
    def create(cls, directory: Path, ca: CA) -> RealPki:
        server = ca.issue_server("localhost", "127.0.0.1")
        client = ca.issue_client("orders-sender", uris=[SPIFFE_SENDER])
        stranger = ca.issue_client("stranger")
        ca.cert_pem.write_to_path(directory / "ca.pem")
        server.chain_pem.write_to_path(directory / "server.pem")
        server.private_key_pem().write_to_path(directory / "server.key")
        for name, issued in (("client", client), ("stranger", stranger)):
            issued.chain_pem.write_to_path(directory / f"{name}.pem")
            issued.private_key_pem().write_to_path(directory / f"{name}.key")
        secret = HmacSecret.generate().export()
        return cls(directory, ca, server, client, stranger, secret)

    def path(self, name: str) -> str:
        return str(self.directory / name)

    def serve_args(self) -> list[str]:
        """TLS arguments of ``serve``: only ``client`` is pinned."""
        tls = ["--cert", self.path("server.pem"), "--key", self.path("server.key")]
        return [*tls, "--client-ca", self.path("ca.pem"), "--pin", self.client.spki_pin]

    def sender(self, identity: str = "client", secret: str | None = None) -> WebhookSender:
        """Our sender as ``identity``, pinning the server; one try, so every answer shows."""
        return WebhookSender(
            signing_keys=secret or self.secret,
            ca_file=self.path("ca.pem"),
            certfile=self.path(f"{identity}.pem"),
            keyfile=self.path(f"{identity}.key"),
            pins=[self.server.spki_pin],
            retry=RetryPolicy(stop=stop_after_attempt(1), attempt_timeout_s=20.0),
        )

    def context(self, identity: str = "client") -> ssl.SSLContext:
        """A plain client context for hand-made requests (failing twins)."""
        return create_client_context(
            ca_file=self.path("ca.pem"),
            certfile=self.path(f"{identity}.pem"),
            keyfile=self.path(f"{identity}.key"),
        )


@dataclass(frozen=True)
class Node:
    """A running ``serve``: its process, URL and records file."""

    child: Child
    url: str
    records: Path

    def records_now(self) -> list[Record]:
        return read_records(self.records)


def app_env(pki: RealPki, inbox_url: str, records: Path, **settings: Any) -> dict[str, str]:
    """The environment of the app in either process; ``settings`` are ``MTLS_HOOKS_*``."""
    env = {
        "MTLS_HOOKS_INBOX_URL": inbox_url,
        "MTLS_HOOKS_KEYS": pki.secret,
        "INBOX_TEST_RECORDS": str(records),
    }
    env.update({f"MTLS_HOOKS_{k.upper()}": str(v) for k, v in settings.items()})
    return env


@contextlib.contextmanager
def serve(
    pki: RealPki, inbox_url: str, records: Path, *extra: str, **settings: Any
) -> Iterator[Node]:
    """``mtls-hooks serve`` of the inbox app on an ephemeral port; SIGTERM (exit 0) after."""
    env = app_env(pki, inbox_url, records, **settings)
    argv = [CLI, "serve", APP, *pki.serve_args(), "--bind", "127.0.0.1:0", *extra]
    child = Child(argv, env)
    try:
        port = child.wait_for(r"Running on https://127\.0\.0\.1:(\d+)").group(1)
        yield Node(child, f"https://localhost:{port}/hooks", records)
        assert child.terminate() == 0, "".join(child.output)[-3000:]
    finally:
        child.close()


def start_worker(
    pki: RealPki, inbox_url: str, records: Path, *args: str, generation: int = 0, **settings: Any
) -> Child:
    """``mtls-hooks process-inbox`` of the inbox app, waited for until it runs."""
    env = app_env(pki, inbox_url, records, **settings)
    env["INBOX_TEST_GENERATION"] = str(generation)
    argv = [CLI, "process-inbox", APP, "--poll-interval-s", "0.1", *args]
    child = Child(argv, env)
    try:
        child.wait_for(r"mtls-hooks process-inbox: worker \S+ on ")
    except BaseException:
        child.close()
        raise
    return child
