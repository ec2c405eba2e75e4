"""Deliveries that succeed: every client-key format, exact bytes, envelope, ids, pooling."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
from standardwebhooks.webhooks import Webhook
from tenacity import stop_after_attempt

from mtls_hooks.core._errors import ConfigurationError, RetriesExhaustedError
from mtls_hooks.core._keys_signing import Ed25519SigningKey
from mtls_hooks.core._signing import Verifier
from mtls_hooks.sender._async import AsyncWebhookSender
from mtls_hooks.sender._base import WebhookMessage
from mtls_hooks.sender._results import DeliveryResult
from mtls_hooks.sender._sync import WebhookSender
from tests.sender.conftest import KINDS, SECRET, FakeTime, SenderPki, deliver, exact_policy
from tests.sender.scripted import ScriptedServer

Serve = Callable[..., ScriptedServer]


@pytest.mark.parametrize("form", ["pem", "encrypted", "pkcs12"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_key_format_delivers(kind: str, form: str, pki: SenderPki, serve: Serve) -> None:
    server = serve([])
    payload = {"invoice": "inv_1", "amount": 4200, "note": "café"}
    result = deliver(kind, {"signing_keys": SECRET, **pki.client(form)}, server.url(), payload)
    assert result.ok
    assert result.status_code == 200
    (request,) = server.requests
    # Serialised once, compact, UTF-8: exactly the bytes that were signed.
    assert request.body == json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("mtls-hooks/")
    assert request.headers["webhook-id"] == result.webhook_id
    assert Webhook(SECRET).verify(request.body, request.headers) == payload


@pytest.mark.parametrize("kind", KINDS)
def test_event_type_envelope_and_given_id(
    kind: str, pki: SenderPki, fake_time: FakeTime, serve: Serve
) -> None:
    server = serve([])
    kwargs = {"signing_keys": SECRET, **pki.client(), **fake_time.kwargs()}
    result = deliver(kind, kwargs, server.url(), {"id": 7}, event_type="order.paid",
                     webhook_id="msg_given")  # fmt: skip
    assert result.webhook_id == "msg_given"
    envelope = json.loads(server.requests[0].body)
    assert envelope["type"] == "order.paid"
    assert envelope["data"] == {"id": 7}
    assert envelope["timestamp"].endswith("Z")


@pytest.mark.parametrize("kind", KINDS)
def test_rotation_signs_with_every_key(kind: str, pki: SenderPki, serve: Serve) -> None:
    server = serve([])
    ed25519 = Ed25519SigningKey.generate()
    deliver(kind, {"signing_keys": [SECRET, ed25519], **pki.client()}, server.url(), b"{}")
    request = server.requests[0]
    versions = [entry.split(",")[0] for entry in request.headers["webhook-signature"].split()]
    assert versions == ["v1", "v1a"]
    assert Webhook(SECRET).verify(request.body, request.headers) == {}
    assert Verifier([ed25519.public_key]).verify(request.headers, request.body).version == "v1a"


def test_sync_sender_keeps_one_connection_alive(pki: SenderPki, serve: Serve) -> None:
    server = serve([])
    with WebhookSender(signing_keys=SECRET, **pki.client()) as sender:
        for n in range(5):
            assert sender.send(server.url(), {"n": n}).ok
    assert server.connections == 1


def test_send_many_sync_keeps_order_and_reports_failures(
    pki: SenderPki, fake_time: FakeTime, serve: Serve
) -> None:
    server = serve([])
    dead = "https://127.0.0.1:9/unreachable"  # port 9 (discard) is closed: refused
    messages = [WebhookMessage(server.url(f"/{n}"), {"n": n}) for n in range(12)]
    messages.insert(5, WebhookMessage(dead, b"{}"))
    policy = exact_policy(stop=stop_after_attempt(2))
    with WebhookSender(signing_keys=SECRET, **pki.client(), **fake_time.kwargs(), retry=policy,
                       max_connections=4) as sender:  # fmt: skip
        results = sender.send_many(messages)
    assert [r.url for r in results] == [m.url for m in messages]
    failed = results.pop(5)
    assert isinstance(failed.error, RetriesExhaustedError)
    assert [a.error for a in failed.attempts] == ["ConnectError", "ConnectError"]
    assert all(r.ok for r in results)
    assert len({r.webhook_id for r in results}) == 12
    assert sorted(r.path for r in server.requests) == sorted(f"/{n}" for n in range(12))
    # The pool holds 4 connections in all: the dead origin's attempt may evict an idle one.
    assert server.connections <= 5


def test_send_many_async_bounded_concurrency(pki: SenderPki, serve: Serve) -> None:
    server = serve([])
    messages = [WebhookMessage(server.url(f"/{n}"), {"n": n}) for n in range(30)]

    async def main() -> list[DeliveryResult]:
        async with AsyncWebhookSender(signing_keys=SECRET, **pki.client()) as sender:
            return await sender.send_many(messages, concurrency=3)

    results = asyncio.run(main())
    assert [r.url for r in results] == [m.url for m in messages]
    assert all(r.ok for r in results)
    assert server.connections <= 3


@pytest.mark.parametrize("kind", KINDS)
def test_send_many_raises_a_bad_message_unwrapped(kind: str, pki: SenderPki, serve: Serve) -> None:
    server = serve([])
    messages = [WebhookMessage(server.url(), {}), WebhookMessage("http://plain/h", {})]
    kwargs = {"signing_keys": SECRET, **pki.client()}

    def send_all() -> None:
        if kind == "sync":
            with WebhookSender(**kwargs) as sender:
                sender.send_many(messages)
            return

        async def main() -> None:
            async with AsyncWebhookSender(**kwargs) as sender:
                await sender.send_many(messages, concurrency=2)

        asyncio.run(main())

    with pytest.raises(ConfigurationError, match="must be https"):
        send_all()


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "http2"])
def test_senders_refuse_use_after_close(pki: SenderPki, serve: Serve, http2: bool) -> None:
    server = serve([])
    kwargs = {"signing_keys": SECRET, **pki.client(), "http2": http2}

    async def main() -> None:
        sender = AsyncWebhookSender(**kwargs)
        if not http2:  # the scripted server speaks HTTP/1.1 only
            await sender.send(server.url(), b"{}")
        await sender.aclose()
        await sender.aclose()  # idempotent
        with pytest.raises(ConfigurationError, match="AsyncWebhookSender is closed"):
            await sender.send(server.url(), b"{}")

    asyncio.run(main())
    with WebhookSender(**kwargs) as sync_sender:
        pass
    with pytest.raises(ConfigurationError, match="WebhookSender is closed"):
        sync_sender.send(server.url(), b"{}")


def test_result_and_attempt_text(pki: SenderPki, serve: Serve) -> None:
    server = serve([])
    result = deliver("sync", {"signing_keys": SECRET, **pki.client()}, server.url(), b"{}")
    assert repr(result).endswith("status_code=200, attempts=1, ok)")
    assert str(result.attempts[0]).startswith("#1 200 in ")
    assert result.raise_for_error() is result
    assert result.elapsed_s == result.attempts[0].latency_s
