"""The receiver through Quart's test client: every check, its failing twin, dispatch, logs.

The verified identity reaches the app through ``scope_base`` (the ASGI TLS extension the
mtls-hooks server fills in); test_e2e.py proves the same behaviour over real mTLS.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import pytest
import pytest_asyncio
from quart import Quart
from quart.testing import QuartClient

from certs_tool import IssuedCert
from mtls_hooks.core._events import WebhookEvent
from mtls_hooks.core._signing import HmacSecret, Signer
from mtls_hooks.receiver._receiver import WebhookReceiver
from tests.receiver.conftest import SPIFFE_SENDER, LogLines, Recorder, Sender, tls_scope

pytestmark = pytest.mark.asyncio

BASIC = ("hooks", "s3cret-pass")


def basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@dataclass
class Rig:
    """An app with one fully guarded endpoint, its client and what its handlers saw."""

    app: Quart
    hooks: WebhookReceiver
    client: QuartClient
    recorder: Recorder
    sender: Sender
    scope: dict[str, Any]

    async def post(
        self,
        body: bytes,
        headers: dict[str, str],
        *,
        path: str = "/hooks",
        scope: dict[str, Any] | None = None,
        basic: tuple[str, str] | None = BASIC,
    ) -> Any:
        if basic is not None:
            headers = {"authorization": basic_header(*basic), **headers}
        return await self.client.post(
            path, data=body, headers=headers, scope_base=self.scope if scope is None else scope
        )

    async def deliver(self, **kwargs: Any) -> Any:
        body, headers = self.sender.request(**kwargs)
        return await self.post(body, headers)


@pytest_asyncio.fixture
async def rig(sender: Sender, sender_cert: IssuedCert) -> AsyncIterator[Rig]:
    app = Quart(__name__)
    hooks = WebhookReceiver(
        app,
        path="/hooks",
        name="payments",
        keys=[sender.key],
        allow=["uri:spiffe://test.example/payments/*"],
        ip_allow=["127.0.0.0/8", "::1/128"],
        basic_auth=BASIC,
        max_body_bytes=4096,
    )
    recorder = Recorder()
    hooks.on("invoice.paid")(recorder.async_handler)
    hooks.on("invoice.synced")(recorder.sync_handler)
    async with app.test_app() as test_app:
        client = cast(QuartClient, test_app.test_client())
        yield Rig(app, hooks, client, recorder, sender, tls_scope(sender_cert))


async def problem(response: Any) -> dict[str, Any]:
    assert response.content_type == "application/problem+json"
    assert response.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = json.loads(await response.get_data())
    assert body["status"] == response.status_code
    return body


async def test_authentic_delivery_reaches_the_async_handler(rig: Rig, log_lines: LogLines) -> None:
    body, headers = rig.sender.request({"type": "invoice.paid", "data": {"amount": 42}})
    response = await rig.post(body, headers)
    assert response.status_code == 204
    [event] = rig.recorder.events
    assert isinstance(event, WebhookEvent)
    assert event.id == headers["webhook-id"]
    assert event.type == "invoice.paid"
    assert event.timestamp == int(headers["webhook-timestamp"])
    assert event.payload == {"type": "invoice.paid", "data": {"amount": 42}}
    assert event.raw_body == body
    assert event.endpoint == "payments"
    assert event.peer is not None
    assert event.peer.spiffe_id == SPIFFE_SENDER
    with pytest.raises(AttributeError):
        event.type = "x"  # type: ignore[misc]
    decision = log_lines.last()
    assert decision["outcome"] == "handled"
    assert decision["status"] == 204
    assert decision["event_id"] == event.id
    assert decision["endpoint"] == "payments"
    assert decision["peer_pin"] == event.peer.spki_pin
    assert decision["peer_subject"] == event.peer.subject
    assert decision["latency_ms"] >= 0
    assert log_lines.records[-1].levelname == "INFO"
    assert f"event_id={event.id}" in log_lines.records[-1].getMessage()


async def test_sync_handler_runs_in_a_worker_thread(rig: Rig) -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []

    @rig.hooks.on("thread.check")
    def handler(event: WebhookEvent) -> tuple[str, int]:
        seen.append(threading.get_ident())
        return "ok", 202

    response = await rig.deliver(event_type="thread.check")
    assert response.status_code == 202
    assert seen
    assert seen[0] != loop_thread
    response = await rig.deliver(event_type="invoice.synced")
    assert response.status_code == 200
    assert json.loads(await response.get_data()) == {"handled": rig.recorder.events[-1].id}


def _twin(**changes: Any) -> dict[str, Any]:
    return changes


REFUSALS = [
    pytest.param(_twin(signer="other"), 401, "bad-signature", id="bad-signature"),
    pytest.param(_twin(drop="webhook-signature"), 401, "missing-header", id="no-signature"),
    pytest.param(_twin(age_s=412), 401, "stale-timestamp", id="stale-timestamp"),
    pytest.param(_twin(age_s=-412), 401, "future-timestamp", id="future-timestamp"),
    pytest.param(_twin(content_type="text/plain"), 415, "content-type", id="wrong-content-type"),
    pytest.param(_twin(drop="content-type"), 415, "content-type", id="no-content-type"),
    pytest.param(_twin(size=5000), 413, "too-large", id="oversized-body"),
    pytest.param(_twin(cert=None), 403, "no-client-certificate", id="no-client-certificate"),
    pytest.param(_twin(cert="stranger"), 403, "identity-not-allowed", id="wrong-identity"),
    pytest.param(_twin(client=("192.0.2.7", 1234)), 403, "ip-not-allowed", id="ip-not-allowed"),
    pytest.param(_twin(basic=None), 401, "basic-auth", id="no-basic-credentials"),
    pytest.param(_twin(basic=("hooks", "wrong")), 401, "basic-auth", id="bad-basic-password"),
    pytest.param(_twin(basic=("hookz", BASIC[1])), 401, "basic-auth", id="bad-basic-username"),
    pytest.param(_twin(body=b"{not json"), 400, "malformed-json", id="malformed-json"),
    pytest.param(_twin(body=b'{"data": 1}'), 400, "missing-type", id="missing-type"),
    pytest.param(_twin(body=b'{"type": ""}'), 400, "missing-type", id="empty-type"),
    pytest.param(_twin(body=b"\xff\xfe"), 400, "malformed-json", id="not-utf8"),
    # 2000 levels fit the 4096-byte cap and exceed the interpreter's recursion limit (1000).
    pytest.param(_twin(body=b"[" * 2000 + b"]" * 2000), 400, "malformed-json", id="too-deep"),
]


@pytest.mark.parametrize(("change", "status", "reason"), REFUSALS)
async def test_each_refusal_is_a_problem_and_its_twin_passes(
    *,
    rig: Rig,
    stranger_cert: IssuedCert,
    log_lines: LogLines,
    change: dict[str, Any],
    status: int,
    reason: str,
) -> None:
    # The twin: the same endpoint accepts the unchanged request.
    assert (await rig.deliver()).status_code == 204
    handled_before = len(rig.recorder.events)

    kwargs: dict[str, Any] = {}
    if change.get("signer") == "other":
        kwargs["signer"] = Signer([HmacSecret.generate()])
    if "age_s" in change:
        kwargs["timestamp"] = int(time.time()) - change["age_s"]
    if "content_type" in change:
        kwargs["content_type"] = change["content_type"]
    if "size" in change:
        kwargs["payload"] = {"type": "invoice.paid", "pad": "x" * change["size"]}
    if "body" in change:
        kwargs["body"] = change["body"]
    body, headers = rig.sender.request(**kwargs)
    if "drop" in change:
        del headers[change["drop"]]
    scope = dict(rig.scope)
    if "cert" in change:
        scope.update(tls_scope(stranger_cert if change["cert"] else None))
    if "client" in change:
        scope["client"] = change["client"]
    basic = change.get("basic", BASIC)

    response = await rig.post(body, headers, scope=scope, basic=basic)

    assert response.status_code == status
    details = await problem(response)
    assert details["reason"] == reason
    assert details["detail"]
    assert len(rig.recorder.events) == handled_before, "no handler may run"
    raw = json.dumps(details)
    assert rig.sender.key not in raw
    assert rig.sender.key.removeprefix("whsec_") not in raw
    expected = Signer([rig.sender.secret]).sign(
        body, webhook_id=headers.get("webhook-id", "x"), timestamp=1
    )
    assert expected.signature.partition(",")[2][:16] not in raw
    assert log_lines.last()["outcome"] == "refused"
    assert log_lines.last()["reason"] == reason
    assert log_lines.records[-1].levelname == "WARNING"
    if status == 401:
        scheme = "Basic" if reason == "basic-auth" else "Signature"
        assert response.headers["WWW-Authenticate"].startswith(scheme)


async def test_timestamp_detail_names_age_and_tolerance(rig: Rig) -> None:
    response = await rig.deliver(timestamp=int(time.time()) - 412)
    detail = (await problem(response))["detail"]
    assert "412 s old" in detail or "413 s old" in detail
    assert "tolerance of 300 s" in detail


async def test_wrong_method_is_405_with_allow(rig: Rig) -> None:
    response = await rig.client.get("/hooks", scope_base=rig.scope)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert (await problem(response))["reason"] == "method-not-allowed"


async def test_oversized_content_length_is_refused_before_the_body_is_read(rig: Rig) -> None:
    body, headers = rig.sender.request()
    headers["content-length"] = "999999"
    response = await rig.post(body, headers)
    assert response.status_code == 413
    assert "999999" in (await problem(response))["detail"]


async def test_duplicate_is_acknowledged_without_running_the_handler(
    rig: Rig, log_lines: LogLines
) -> None:
    body, headers = rig.sender.request()
    assert (await rig.post(body, headers)).status_code == 204
    again = await rig.post(body, headers)
    assert again.status_code == 204
    assert again.headers["Webhook-Duplicate"] == "true"
    assert len(rig.recorder.events) == 1
    assert log_lines.last()["outcome"] == "duplicate"


async def test_retry_with_a_fresh_signature_is_still_a_duplicate(rig: Rig) -> None:
    """Senders re-sign every attempt: dedupe keys on the id, not on the signature."""
    webhook_id = Signer.new_webhook_id()
    assert (await rig.deliver(webhook_id=webhook_id)).status_code == 204
    retry = await rig.deliver(webhook_id=webhook_id, timestamp=int(time.time()) + 5)
    assert retry.headers["Webhook-Duplicate"] == "true"
    assert len(rig.recorder.events) == 1


async def test_concurrent_duplicates_run_the_handler_once(rig: Rig, log_lines: LogLines) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()
    runs: list[str] = []

    @rig.hooks.on("slow.event")
    async def slow(event: WebhookEvent) -> None:
        runs.append(event.id)
        entered.set()
        await release.wait()

    body, headers = rig.sender.request(event_type="slow.event")
    first = asyncio.ensure_future(rig.post(body, headers))
    await asyncio.wait_for(entered.wait(), 5)
    second = await rig.post(body, headers)
    assert second.status_code == 503
    assert second.headers["Retry-After"] == "5"
    assert (await problem(second))["reason"] == "in-flight"
    release.set()
    assert (await first).status_code == 204
    third = await rig.post(body, headers)
    assert third.headers["Webhook-Duplicate"] == "true"
    assert runs == [headers["webhook-id"]]
    outcomes = [d["outcome"] for d in log_lines.decisions]
    assert outcomes == ["refused", "handled", "duplicate"]


async def test_handler_exception_is_a_bare_500_logged_with_the_id(
    rig: Rig, log_lines: LogLines
) -> None:
    attempts: list[str] = []

    @rig.hooks.on("flaky.event")
    async def flaky(event: WebhookEvent) -> None:
        attempts.append(event.id)
        if len(attempts) == 1:
            raise RuntimeError("database password is hunter2")

    body, headers = rig.sender.request(event_type="flaky.event")
    response = await rig.post(body, headers)
    assert response.status_code == 500
    details = await problem(response)
    assert details["reason"] == "handler-error"
    assert headers["webhook-id"] in details["detail"]
    raw = json.dumps(details)
    assert "hunter2" not in raw
    assert "Traceback" not in raw
    assert "RuntimeError" not in raw
    record = log_lines.records[-1]
    assert record.levelname == "ERROR"
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)
    assert log_lines.last()["event_id"] == headers["webhook-id"]
    assert log_lines.last()["outcome"] == "handler-error"
    # The claim was released: the sender's retry runs the handler again and succeeds.
    assert (await rig.post(body, headers)).status_code == 204
    assert attempts == [headers["webhook-id"]] * 2


async def test_handler_refusing_with_5xx_lets_the_retry_run_again(rig: Rig) -> None:
    answers = iter([("busy", 503), None])

    @rig.hooks.on("busy.event")
    async def busy(event: WebhookEvent) -> Any:
        return next(answers)

    body, headers = rig.sender.request(event_type="busy.event")
    assert (await rig.post(body, headers)).status_code == 503
    assert (await rig.post(body, headers)).status_code == 204
    assert (await rig.post(body, headers)).headers["Webhook-Duplicate"] == "true"


async def test_unknown_type_is_acknowledged_then_fallback_takes_it(
    rig: Rig, log_lines: LogLines
) -> None:
    response = await rig.deliver(event_type="customer.created")
    assert response.status_code == 204
    assert log_lines.last()["outcome"] == "unhandled"
    seen: list[str] = []
    rig.hooks.on_any(lambda event: seen.append(event.type))
    assert (await rig.deliver(event_type="customer.deleted")).status_code == 204
    assert seen == ["customer.deleted"]


async def test_log_line_quotes_untrusted_ids(rig: Rig, log_lines: LogLines) -> None:
    body, headers = rig.sender.request()
    headers["webhook-id"] = 'evil" outcome=handled'
    await rig.post(body, headers)
    message = log_lines.records[-1].getMessage()
    assert 'event_id="evil\\" outcome=handled"' in message
    assert message.startswith("webhook outcome=refused status=401 ")


async def test_event_type_extractor(sender: Sender) -> None:
    app = Quart(__name__)
    hooks = WebhookReceiver(
        app,
        path="/cloudevents",
        keys=[sender.key],
        require_peer=False,
        content_types=["application/cloudevents+json"],
        event_type=lambda payload: payload["kind"],
    )
    seen: list[str] = []
    hooks.on("order.shipped")(lambda event: seen.append(event.id))
    client = app.test_client()
    body, headers = sender.request(
        {"kind": "order.shipped"}, content_type="application/cloudevents+json; charset=utf-8"
    )
    assert (await client.post("/cloudevents", data=body, headers=headers)).status_code == 204
    first_id = headers["webhook-id"]
    body, headers = sender.request({"other": 1}, content_type="application/cloudevents+json")
    response = await client.post("/cloudevents", data=body, headers=headers)
    assert response.status_code == 400  # the extractor raised: a malformed payload
    assert seen == [first_id]


async def test_store_failure_is_503_and_the_handler_does_not_run(sender: Sender) -> None:
    class BrokenStore:
        async def claim(self, key: str) -> Any:
            raise OSError("disk full")

        async def complete(self, key: str) -> None: ...
        async def release(self, key: str) -> None: ...
        async def aclose(self) -> None: ...

    app = Quart(__name__)
    hooks = WebhookReceiver(
        app, path="/h", keys=[sender.key], require_peer=False, store=BrokenStore()
    )
    ran: list[str] = []
    hooks.on_any(lambda event: ran.append(event.id))
    body, headers = sender.request()
    response = await app.test_client().post("/h", data=body, headers=headers)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    assert not ran


async def test_endpoints_keep_their_own_keys_and_handlers(sender: Sender) -> None:
    other = Sender()
    app = Quart(__name__)
    hooks = WebhookReceiver(app, require_peer=False)
    billing = hooks.endpoint("/hooks/billing", name="billing", keys=[sender.key])
    shipping = hooks.endpoint("/hooks/shipping", name="shipping", keys=[other.key])
    seen: list[tuple[str, str]] = []
    billing.on("ping")(lambda event: seen.append(("billing-only", event.endpoint)))
    hooks.on("ping")(lambda event: seen.append(("shared", event.endpoint)))
    shipping.on_any(lambda event: seen.append(("shipping-fallback", event.type)))
    client = cast(QuartClient, app.test_client())

    body, headers = sender.request(event_type="ping")
    assert (await client.post("/hooks/billing", data=body, headers=headers)).status_code == 204
    response = await client.post("/hooks/shipping", data=body, headers=headers)
    assert response.status_code == 401  # billing's key is not trusted on shipping
    body, headers = other.request(event_type="ping")
    assert (await client.post("/hooks/shipping", data=body, headers=headers)).status_code == 204
    body, headers = other.request(event_type="pong")
    assert (await client.post("/hooks/shipping", data=body, headers=headers)).status_code == 204
    assert seen == [
        ("billing-only", "billing"),
        ("shared", "shipping"),
        ("shipping-fallback", "pong"),
    ]


async def test_rotation_accepts_old_and_new_keys(sender: Sender) -> None:
    new = Sender()
    app = Quart(__name__)
    hooks = WebhookReceiver(app, path="/h", keys=[sender.key, new.key], require_peer=False)
    hooks.on_any(lambda event: None)
    client = app.test_client()
    for who in (sender, new):
        body, headers = who.request()
        assert (await client.post("/h", data=body, headers=headers)).status_code == 204


async def test_quart_max_content_length_also_gives_a_problem(rig: Rig) -> None:
    rig.app.config["MAX_CONTENT_LENGTH"] = 100  # below the endpoint's own 4096-byte cap
    body, headers = rig.sender.request({"type": "invoice.paid", "pad": "x" * 200})
    client = cast(QuartClient, rig.app.test_client())
    response = await client.post(
        "/hooks",
        data=body,
        headers={"authorization": basic_header(*BASIC), **headers},
        scope_base=rig.scope,
    )
    assert response.status_code == 413
    assert (await problem(response))["reason"] == "too-large"


PEER_RULES = [
    pytest.param({"allow": ["uri:spiffe://test.example/payments/*"]}, id="allow-rule"),
    pytest.param({"pins": ["<sender-pin>"]}, id="spki-pin"),
]


@pytest.mark.parametrize("rules", PEER_RULES)
async def test_rules_refuse_a_request_without_a_certificate_even_when_peers_are_optional(
    sender: Sender,
    sender_cert: IssuedCert,
    stranger_cert: IssuedCert,
    log_lines: LogLines,
    rules: dict[str, list[str]],
) -> None:
    """require_peer=False lifts the certificate requirement only where no rule names peers."""
    rules = {
        name: [sender_cert.spki_pin if value == "<sender-pin>" else value for value in values]
        for name, values in rules.items()
    }
    app = Quart(__name__)
    hooks = WebhookReceiver(app, keys=[sender.key], require_peer=False)
    hooks.endpoint("/ruled", name="ruled", **rules)  # type: ignore[arg-type]
    hooks.endpoint("/open", name="open")
    ran: list[str] = []
    hooks.on_any(lambda event: ran.append(event.endpoint))
    client = cast(QuartClient, app.test_client())

    async def post(path: str, cert: IssuedCert | None, scope: dict[str, Any] | None = None) -> Any:
        body, headers = sender.request()
        scope = tls_scope(cert) if scope is None else scope
        return await client.post(path, data=body, headers=headers, scope_base=scope)

    # The twins: the named peer passes, and without rules no certificate is needed.
    assert (await post("/ruled", sender_cert)).status_code == 204
    assert (await post("/open", None)).status_code == 204
    assert ran == ["ruled", "open"]

    refused = await post("/ruled", None)
    assert refused.status_code == 403
    assert (await problem(refused))["reason"] == "no-client-certificate"
    assert log_lines.last()["reason"] == "no-client-certificate"
    other = await post("/ruled", stranger_cert)
    assert other.status_code == 403
    assert (await problem(other))["reason"] == "identity-not-allowed"
    unreadable = {"extensions": {"tls": {"client_cert_chain": ["not a certificate"]}}}
    junk = await post("/ruled", None, unreadable)
    assert junk.status_code == 403
    assert (await problem(junk))["reason"] == "no-client-certificate"
    assert ran == ["ruled", "open"]


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_dedupe_keys_are_per_endpoint(sender: Sender, tmp_path: Any, store: str) -> None:
    """One webhook-id sent to two endpoints runs each endpoint's handler once."""
    app = Quart(__name__)
    app.config["MTLS_HOOKS_KEYS"] = [sender.key]
    if store == "sqlite":
        app.config["MTLS_HOOKS_DEDUPE_PATH"] = str(tmp_path / "dedupe.db")
    hooks = WebhookReceiver(app, require_peer=False)
    runs: list[tuple[str, str]] = []
    for name in ("billing", "shipping"):
        hooks.endpoint(f"/hooks/{name}", name=name)
    hooks.on_any(lambda event: runs.append((event.endpoint, event.id)))
    webhook_id = Signer.new_webhook_id()
    async with app.test_app() as test_app:
        client = cast(QuartClient, test_app.test_client())
        answers = []
        for path in ("/hooks/billing", "/hooks/shipping", "/hooks/billing", "/hooks/shipping"):
            body, headers = sender.request(webhook_id=webhook_id)
            answers.append(await client.post(path, data=body, headers=headers))
        kind = type(hooks.store(app)).__name__
    assert kind == ("SQLiteDedupeStore" if store == "sqlite" else "MemoryDedupeStore")
    assert [a.status_code for a in answers] == [204] * 4
    assert ["Webhook-Duplicate" in a.headers for a in answers] == [False, False, True, True]
    assert runs == [("billing", webhook_id), ("shipping", webhook_id)]
