"""Rate limits end to end: our receiver over real mTLS answers 429 with ``Retry-After``, and
our sender waits exactly that long before it tries again (one fake clock drives both).
"""

from __future__ import annotations

from pathlib import Path

from quart import Quart

from certs_tool import CA, IssuedCert
from mtls_hooks.core._events import WebhookEvent
from mtls_hooks.core._signing import HmacSecret
from mtls_hooks.receiver._receiver import WebhookReceiver
from mtls_hooks.sender._sync import WebhookSender
from mtls_hooks.serving._config import ServerConfig
from mtls_hooks.stores._ratelimit import MemoryRateLimiter
from mtls_hooks.testing import running_server
from tests.stores._backends import Clock


def test_a_limited_sender_waits_for_retry_after_then_is_admitted(
    tmp_path: Path, certs_ca: CA, certs_server: IssuedCert, certs_client: IssuedCert
) -> None:
    secret = HmacSecret.generate()
    clock = Clock()
    app = Quart(__name__)
    hooks = WebhookReceiver(
        app,
        path="/hooks",
        keys=[secret.export()],
        rate_limit="2/min",
        rate_limiter=MemoryRateLimiter(clock=clock),
    )
    handled: list[str] = []

    @hooks.on_any
    async def record(event: WebhookEvent) -> None:
        handled.append(event.id)

    certs_server.chain_pem.write_to_path(tmp_path / "server.pem")
    certs_server.private_key_pem().write_to_path(tmp_path / "server-key.pem")
    certs_client.chain_pem.write_to_path(tmp_path / "client.pem")
    certs_client.private_key_pem().write_to_path(tmp_path / "client-key.pem")
    certs_ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    config = ServerConfig(
        certfile=str(tmp_path / "server.pem"),
        keyfile=str(tmp_path / "server-key.pem"),
        client_ca=(str(tmp_path / "ca.pem"),),
        pins=(certs_client.spki_pin,),
    )
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # the sender's wait moves the receiver's clock too
        waits.append(seconds)
        clock.now += seconds

    with (
        running_server(app, config) as server,
        WebhookSender(
            signing_keys=secret,
            ca_file=tmp_path / "ca.pem",
            certfile=tmp_path / "client.pem",
            keyfile=tmp_path / "client-key.pem",
            sleep=sleep,
        ) as sender,
    ):
        url = server.url("/hooks")
        first = [sender.send(url, {"type": "ping", "n": n}) for n in range(2)]
        limited = sender.send(url, {"type": "ping", "n": 2})
    assert [r.status_code for r in first] == [204, 204]
    assert [a.status_code for a in limited.attempts] == [429, 204]
    assert waits == [30.0]  # one token per 30 s: exactly the Retry-After it was given
    assert limited.ok
    assert len(handled) == 3
