"""Against our own receiver (Quart + Hypercorn, pinned mTLS): HTTP/1.1 and HTTP/2, both twins."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from quart import Quart
from tenacity import stop_after_attempt

from mtls_hooks.core._errors import RetriesExhaustedError, StatusError
from mtls_hooks.core._events import WebhookEvent
from mtls_hooks.core._signing import HmacSecret
from mtls_hooks.receiver._receiver import WebhookReceiver
from mtls_hooks.serving._config import ServerConfig
from mtls_hooks.testing import ServerHandle, running_server
from tests.sender.conftest import KINDS, SECRET, FakeTime, SenderPki, deliver, exact_policy


@dataclass
class Seen:
    events: list[WebhookEvent] = field(default_factory=list)
    flaky_calls: int = 0


def _app(seen: Seen) -> Quart:
    app = Quart(__name__)
    hooks = WebhookReceiver(app, path="/hooks", keys=[SECRET], allow=["subject:CN=sender"])

    @hooks.on("invoice.paid")
    async def paid(event: WebhookEvent) -> None:
        seen.events.append(event)

    @hooks.on("flaky")
    async def flaky(event: WebhookEvent) -> tuple[str, int, dict[str, str]] | None:
        seen.flaky_calls += 1
        seen.events.append(event)
        # A non-2xx answer releases the id, so the sender's retry runs the handler again.
        return ("busy", 503, {"Retry-After": "4"}) if seen.flaky_calls == 1 else None

    return app


@pytest.fixture(scope="module")
def receiver(pki: SenderPki) -> Iterator[tuple[ServerHandle, Seen]]:
    seen = Seen()
    config = ServerConfig(
        certfile=str(pki.path("server.pem")),
        keyfile=str(pki.path("server.key")),
        client_ca=(str(pki.ca_file),),
        pins=(pki.client_pin,),
        graceful_timeout_s=1.0,
    )
    with running_server(_app(seen), config) as server:
        yield server, seen


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "http2"])
@pytest.mark.parametrize("kind", KINDS)
def test_our_receiver_accepts_our_deliveries(
    kind: str, http2: bool, pki: SenderPki, receiver: tuple[ServerHandle, Seen]
) -> None:
    server, seen = receiver
    kwargs = {"signing_keys": SECRET, **pki.client(), "http2": http2, "pins": [pki.server_pin]}
    result = deliver(kind, kwargs, server.url("/hooks"), {"n": 1}, event_type="invoice.paid")
    assert result.status_code == 204
    event = next(e for e in seen.events if e.id == result.webhook_id)
    assert event.type == "invoice.paid"
    assert event.payload["data"] == {"n": 1}
    assert event.peer is not None
    assert event.peer.subject == "CN=sender"


@pytest.mark.parametrize("kind", KINDS)
def test_retry_runs_the_handler_again_with_the_same_id(
    kind: str, pki: SenderPki, receiver: tuple[ServerHandle, Seen], fake_time: FakeTime
) -> None:
    server, seen = receiver
    seen.flaky_calls = 0
    kwargs = {"signing_keys": SECRET, **pki.client(), **fake_time.kwargs(),
              "retry": exact_policy()}  # fmt: skip
    result = deliver(kind, kwargs, server.url("/hooks"), {}, event_type="flaky")
    assert [a.status_code for a in result.attempts] == [503, 204]
    assert fake_time.sleeps == [4.0]
    assert [e.id for e in seen.events if e.type == "flaky"][-2:] == [result.webhook_id] * 2


@pytest.mark.parametrize("kind", KINDS)
def test_redelivery_of_one_id_is_acknowledged_once(
    kind: str, pki: SenderPki, receiver: tuple[ServerHandle, Seen]
) -> None:
    server, seen = receiver
    kwargs = {"signing_keys": SECRET, **pki.client()}
    webhook_id = f"msg_dup_{kind}"
    for _ in range(2):
        result = deliver(kind, kwargs, server.url("/hooks"), {}, event_type="invoice.paid",
                         webhook_id=webhook_id)  # fmt: skip
        assert result.ok
    assert [e.id for e in seen.events].count(webhook_id) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_unpinned_sender_is_dropped_and_told_why(
    kind: str, pki: SenderPki, receiver: tuple[ServerHandle, Seen], fake_time: FakeTime
) -> None:
    server, _ = receiver
    stranger = pki.ca.issue_client(common_name="stranger")
    stranger.chain_pem.write_to_path(pki.path(f"stranger-{kind}.pem"))
    stranger.private_key_pem().write_to_path(pki.path(f"stranger-{kind}.key"))
    kwargs = {"signing_keys": SECRET, "ca_file": pki.ca_file, **fake_time.kwargs(),
              "certfile": pki.path(f"stranger-{kind}.pem"),
              "keyfile": pki.path(f"stranger-{kind}.key"),
              "retry": exact_policy(stop=stop_after_attempt(2))}  # fmt: skip
    with pytest.raises(RetriesExhaustedError) as caught:
        deliver(kind, kwargs, server.url("/hooks"), {}, event_type="invoice.paid")
    # Under TLS 1.3 the receiver's refusal reaches us only as a dropped connection.
    assert str(caught.value).startswith("gave up after 2 attempt(s) (attempt limit): ")
    # The drop arrives as "Server disconnected" or as a reset, depending on timing.
    assert "the receiver may be refusing our client certificate" in str(caught.value)


@pytest.mark.parametrize("kind", KINDS)
def test_refusal_by_our_receiver_reads_as_its_reason(
    kind: str, pki: SenderPki, receiver: tuple[ServerHandle, Seen]
) -> None:
    server, _ = receiver
    kwargs = {"signing_keys": HmacSecret.generate().export(), **pki.client()}  # not its key
    with pytest.raises(StatusError) as caught:
        deliver(kind, kwargs, server.url("/hooks"), {}, event_type="invoice.paid")
    assert str(caught.value).startswith("receiver answered 401 Unauthorized: bad-signature: ")
    assert "{" not in str(caught.value)  # the problem document is read, not quoted
