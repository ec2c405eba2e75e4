"""The lean path (``receiver/_asgi.py``) answers exactly as the Quart path, over real mTLS.

One app serves the same endpoint twice: ``/lean`` on the lean path, ``/quart`` with
``quart_request=True`` on Quart's request machinery. Every request of the table below is sent
to both, over HTTP/1.1 and HTTP/2, and the answers (status, headers, body) and the decision
lines must be the same. Then what only the lean path must get right on its own: that it is the
path taken (a handler sees no Quart request context there), the peer inside handlers, a
handler's return value, sync handlers in a thread, a sender hanging up, the body deadline,
keep-alive after a refusal, and the cases that go to Quart instead.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import quart
from quart import Quart

from certs_tool import CA
from mtls_hooks.core._events import WebhookEvent
from mtls_hooks.core._signing import HmacSecret, Signer
from mtls_hooks.receiver._asgi import LeanWebhooks
from mtls_hooks.receiver._authz import current_peer
from mtls_hooks.receiver._receiver import WebhookReceiver
from mtls_hooks.testing import ServerHandle, running_server
from tests.receiver.conftest import SPIFFE_SENDER, LogLines, Sender
from tests.serving.conftest import Identity, Pki

BASIC = ("hooks", "lean-pass")
AUTH = httpx.BasicAuth(*BASIC)
ENDPOINT_OPTIONS: dict[str, Any] = {"basic_auth": BASIC, "max_body_bytes": 4096}


@dataclass
class Seen:
    """What handlers saw, written on the server's thread."""

    contexts: list[tuple[str, bool, str, str]] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    finished: list[str] = field(default_factory=list)


QUART_MAX_CONTENT_LENGTH = 3000  # Quart's own cap, below the endpoints' 4096 bytes


def build_app(sender: Sender, seen: Seen) -> Quart:
    app = Quart(__name__)
    app.config["MAX_CONTENT_LENGTH"] = QUART_MAX_CONTENT_LENGTH
    hooks = WebhookReceiver(app, keys=[sender.key], allow=["uri:spiffe://test.example/payments/*"])
    hooks.endpoint("/lean", name="lean", **ENDPOINT_OPTIONS)
    hooks.endpoint("/quart", name="quart", quart_request=True, **ENDPOINT_OPTIONS)
    hooks.endpoint("/lean/slow-body", name="lean-slow", body_timeout_s=0.3)
    hooks.endpoint("/quart/slow-body", name="quart-slow", body_timeout_s=0.3, quart_request=True)

    @hooks.on("invoice.paid")
    async def paid(event: WebhookEvent) -> None:
        assert event.peer is not None
        seen.contexts.append(
            (
                event.endpoint,
                quart.has_request_context(),
                current_peer().subject,
                event.peer.subject,
            )
        )

    @hooks.on("invoice.synced")
    def synced(event: WebhookEvent) -> dict[str, Any]:
        seen.threads.append(threading.get_ident())
        return {"synced": event.id, "peer": current_peer().spiffe_id}

    @hooks.on("reply.created")
    async def created(event: WebhookEvent) -> tuple[str, int, dict[str, str]]:
        return "made", 201, {"X-Made": event.endpoint}

    @hooks.on("reply.refused")
    async def refused(event: WebhookEvent) -> tuple[str, int]:
        return "not now", 409

    @hooks.on("boom")
    async def boom(event: WebhookEvent) -> None:
        raise ValueError("secret internals")

    @hooks.on("reads.request")
    async def reads_request(event: WebhookEvent) -> dict[str, str | None]:
        return {"probe": quart.request.headers.get("x-probe")}

    @hooks.on("held")
    async def held(event: WebhookEvent) -> None:
        seen.entered.set()
        await asyncio.to_thread(seen.release.wait, 10)
        seen.finished.append(event.id)

    @app.get("/other")
    async def other() -> str:
        return "quart route"

    return app


@dataclass
class Rig:
    server: ServerHandle
    pki: Pki
    sender: Sender
    identity: Identity
    stranger: Identity
    seen: Seen

    def client(self, identity: Identity | None = None, *, http2: bool = False) -> httpx.Client:
        context = self.pki.context(identity or self.identity, http2=http2)
        return httpx.Client(verify=context, http2=http2, timeout=10)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, certs_ca: CA, sender: Sender) -> Iterator[Rig]:
    pki = Pki.create(tmp_path_factory.mktemp("lean-pki"), certs_ca)
    identity = pki.identity("payments", uris=[SPIFFE_SENDER])
    stranger = pki.identity("stranger", uris=["spiffe://test.example/other/svc"])
    seen = Seen()
    app = build_app(sender, seen)
    assert isinstance(app.asgi_app, LeanWebhooks)
    with running_server(app, pki.config(identity, stranger)) as server:
        yield Rig(server, pki, sender, identity, stranger, seen)


# --------------------------------------------------------------------------- the same answers

Request = tuple[str, bytes | Iterator[bytes], list[tuple[str, str]], bool]


def _signed(rig: Rig, **options: Any) -> tuple[bytes, list[tuple[str, str]]]:
    body, headers = rig.sender.request(**options)
    return body, list(headers.items())


def _chunks(size: int) -> Iterator[bytes]:
    yield b'{"type": "invoice.paid", "pad": "'
    for _ in range(size // 1024):
        yield b"x" * 1024
    yield b'"}'


def _build(rig: Rig, case: str) -> Request:
    """(method, body, headers, as the stranger) of one case; the same request goes to both."""
    now = int(time.time())
    if case == "not-post":
        return "PUT", b"{}", [("content-type", "application/json")], False
    if case == "wrong-identity":
        body, headers = _signed(rig)
        return "POST", body, headers, True
    if case == "no-basic-auth":
        body, headers = _signed(rig)
        return "POST", body, [*headers, ("authorization", "Bearer x")], False
    if case == "content-type":
        body, headers = _signed(rig, content_type="text/plain")
        return "POST", body, headers, False
    if case == "too-large":
        body, headers = _signed(rig, payload={"type": "invoice.paid", "pad": "x" * 5000})
        return "POST", body, headers, False
    if case == "too-large-chunked":
        _, headers = _signed(rig)
        return "POST", _chunks(8192), headers, False
    if case == "bad-signature":
        body, headers = _signed(rig, signer=Signer([HmacSecret.generate()]))
        return "POST", body, headers, False
    if case == "stale":
        body, headers = _signed(rig, timestamp=now - 3600)
        return "POST", body, headers, False
    if case == "repeated-id":
        body, headers = _signed(rig)
        webhook_id = dict(headers)["webhook-id"]
        return "POST", body, [*headers, ("webhook-id", webhook_id)], False
    if case == "not-json":
        body, headers = _signed(rig, body=b"{not json")
        return "POST", body, headers, False
    if case == "no-type":
        body, headers = _signed(rig, payload={"data": 1})
        return "POST", body, headers, False
    event_types = {
        "handled": "invoice.paid",
        "unhandled": "nobody.listens",
        "sync-value": "invoice.synced",
        "tuple-value": "reply.created",
        "handler-refused": "reply.refused",
        "handler-error": "boom",
    }
    body, headers = _signed(rig, event_type=event_types[case])
    return "POST", body, headers, False


CASES = [
    "not-post",
    "wrong-identity",
    "no-basic-auth",
    "content-type",
    "too-large",
    "too-large-chunked",
    "bad-signature",
    "stale",
    "repeated-id",
    "not-json",
    "no-type",
    "handled",
    "unhandled",
    "sync-value",
    "tuple-value",
    "handler-refused",
    "handler-error",
]


# Not compared: the date, and "connection: close" on an early refusal, which both paths add
# when the body has not fully arrived yet, a race with the client's own writes (the
# keep-alive tests below pin both outcomes down with requests written in one piece or not).
_UNCOMPARED = frozenset({"date", "connection"})


def _answer(response: httpx.Response, endpoint: str) -> tuple[int, dict[str, str], Any]:
    headers = {k.lower(): v for k, v in response.headers.items() if k.lower() not in _UNCOMPARED}
    body: Any = response.content
    if headers.get("content-type", "").endswith("json"):
        body = json.loads(body)
    if headers.get("x-made") == endpoint:
        headers["x-made"] = "<endpoint>"
    if isinstance(body, dict) and body.get("synced"):
        body["synced"] = "<id>"
    if isinstance(body, dict) and "detail" in body:
        # A streamed body is refused once the bytes read pass the cap: how many had been
        # read by then depends on how the chunks arrived. A stale timestamp's age is in
        # seconds, and a second may tick between the two requests.
        detail = re.sub(r"\d+ bytes or more", "N bytes or more", body["detail"])
        body["detail"] = re.sub(r"is \d+ s old", "is N s old", detail)
    return response.status_code, headers, body


def _decision(log_lines: LogLines, endpoint: str) -> dict[str, Any]:
    found = [d for d in log_lines.decisions if d["endpoint"] == endpoint]
    assert len(found) <= 1, found
    if not found:
        return {}
    return {k: v for k, v in found[0].items() if k not in ("endpoint", "latency_ms")}


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "http2"])
@pytest.mark.parametrize("case", CASES)
def test_lean_and_quart_paths_answer_alike(
    rig: Rig, log_lines: LogLines, case: str, http2: bool
) -> None:
    method, body, headers, as_stranger = _build(rig, case)
    answers = {}
    for endpoint in ("lean", "quart"):
        who = rig.stranger if as_stranger else rig.identity
        with rig.client(who, http2=http2) as client:
            content = _chunks(8192) if case == "too-large-chunked" else body
            response = client.request(
                method,
                rig.server.url(f"/{endpoint}"),
                content=content,
                headers=headers,
                auth=None if case == "no-basic-auth" else AUTH,
            )
        answers[endpoint] = _answer(response, endpoint)
        if method == "POST":
            log_lines.wait_for_decision(endpoint=endpoint)
    assert answers["lean"] == answers["quart"]
    assert _decision(log_lines, "lean") == _decision(log_lines, "quart")
    if method == "POST":
        assert _decision(log_lines, "lean")  # every POST wrote its decision line


def test_a_duplicate_is_answered_alike(rig: Rig) -> None:
    body, headers = _signed(rig)
    answers = {}
    with rig.client() as client:
        for endpoint in ("lean", "quart"):
            url = rig.server.url(f"/{endpoint}")
            first = client.post(url, content=body, headers=headers, auth=AUTH)
            again = client.post(url, content=body, headers=headers, auth=AUTH)
            assert first.status_code == 204
            answers[endpoint] = _answer(again, endpoint)
    assert answers["lean"] == answers["quart"]
    assert answers["lean"][0] == 204
    assert answers["lean"][1]["webhook-duplicate"] == "true"


# --------------------------------------------------------------------------- what handlers see


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "http2"])
def test_the_lean_path_is_taken_and_handlers_keep_their_peer(rig: Rig, http2: bool) -> None:
    body, headers = _signed(rig)
    with rig.client(http2=http2) as client:
        for endpoint in ("lean", "quart"):
            url = rig.server.url(f"/{endpoint}")
            assert client.post(url, content=body, headers=headers, auth=AUTH).status_code == 204
    lean, via_quart = rig.seen.contexts[-2:]
    assert lean[:2] == ("lean", False), "the lean endpoint ran inside Quart's request context"
    assert via_quart[:2] == ("quart", True)
    # current_peer() inside the handler and event.peer agree, on both paths.
    assert lean[2] == lean[3] == via_quart[2] == via_quart[3] == "CN=payments"


def test_a_sync_handler_runs_in_a_thread_and_sees_the_peer(rig: Rig) -> None:
    body, headers = _signed(rig, event_type="invoice.synced")
    with rig.client() as client:
        response = client.post(rig.server.url("/lean"), content=body, headers=headers, auth=AUTH)
    assert response.status_code == 200
    assert response.json()["peer"] == SPIFFE_SENDER
    server_thread = next(t for t in threading.enumerate() if t.name.endswith(str(rig.server.port)))
    assert rig.seen.threads[-1] != server_thread.ident


def test_a_handler_reading_quarts_request_needs_the_option(rig: Rig, log_lines: LogLines) -> None:
    body, headers = _signed(rig, event_type="reads.request")
    with rig.client() as client:
        lean = client.post(
            rig.server.url("/lean"), content=body, headers=[*headers, ("x-probe", "p")], auth=AUTH
        )
        via_quart = client.post(
            rig.server.url("/quart"), content=body, headers=[*headers, ("x-probe", "p")], auth=AUTH
        )
    assert via_quart.status_code == 200
    assert via_quart.json() == {"probe": "p"}
    # Documented: no Quart request context on the lean path; the handler fails loudly, 500.
    assert lean.status_code == 500
    assert lean.json()["reason"] == "handler-error"
    assert log_lines.wait_for_decision(endpoint="lean", outcome="handler-error")


def test_other_routes_and_methods_go_to_quart(rig: Rig) -> None:
    with rig.client() as client:
        assert client.get(rig.server.url("/other")).text == "quart route"
        assert client.get(rig.server.url("/lean")).status_code == 405  # the view, via Quart
        assert client.post(rig.server.url("/nowhere")).status_code == 404


def test_a_sender_hanging_up_leaves_the_handler_running(rig: Rig, log_lines: LogLines) -> None:
    body, headers = _signed(rig, event_type="held")
    webhook_id = dict(headers)["webhook-id"]
    url = rig.server.url("/lean")
    rig.seen.entered.clear()
    rig.seen.release.clear()
    try:
        with (
            httpx.Client(verify=rig.pki.context(rig.identity), timeout=0.5) as impatient,
            pytest.raises(httpx.ReadTimeout),
        ):
            impatient.post(url, content=body, headers=headers, auth=AUTH)
        assert rig.seen.entered.wait(10)
        with rig.client() as client:
            during = client.post(url, content=body, headers=headers, auth=AUTH)
        assert during.status_code == 503
        assert during.json()["reason"] == "in-flight"
    finally:
        rig.seen.release.set()
    log_lines.wait_for_decision(endpoint="lean", event_id=webhook_id, outcome="handled")
    assert rig.seen.finished.count(webhook_id) == 1
    with rig.client() as client:
        after = client.post(url, content=body, headers=headers, auth=AUTH)
    assert after.headers["webhook-duplicate"] == "true"


# --------------------------------------------------------------------------- the wire


def _tls(rig: Rig, identity: Identity) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", rig.server.port), timeout=10)
    context = rig.pki.context(identity)
    return context.wrap_socket(raw, server_hostname="localhost")


def _read_answer(tls: ssl.SSLSocket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(rest) < length:
        rest += tls.recv(65536)
    return head.lower()


def _raw_request(rig: Rig, path: str, body: bytes, headers: list[tuple[str, str]]) -> bytes:
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return (
        f"POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-length: {len(body)}\r\n{lines}\r\n"
    ).encode() + body


@pytest.mark.parametrize("endpoint", ["lean", "quart"])
def test_a_refusal_after_the_whole_body_keeps_the_connection(rig: Rig, endpoint: str) -> None:
    body, headers = _signed(rig)
    with _tls(rig, rig.stranger) as tls:  # refused by the endpoint's identity rule
        tls.sendall(_raw_request(rig, f"/{endpoint}", body, headers))
        head = _read_answer(tls)
        assert head.startswith(b"http/1.1 403")
        assert b"connection: close" not in head
        tls.sendall(_raw_request(rig, f"/{endpoint}", body, headers))  # the same connection
        assert _read_answer(tls).startswith(b"http/1.1 403")


@pytest.mark.parametrize("endpoint", ["lean", "quart"])
def test_an_early_refusal_with_an_unread_body_says_connection_close(
    rig: Rig, endpoint: str
) -> None:
    body, headers = _signed(rig)
    with _tls(rig, rig.stranger) as tls:
        request = _raw_request(rig, f"/{endpoint}", body, headers)
        tls.sendall(request[: request.index(b"\r\n\r\n") + 4])  # the head only
        head = _read_answer(tls)
        assert head.startswith(b"http/1.1 403")
        assert b"\r\nconnection: close" in head
        assert tls.recv(65536) == b""  # and the server closes it


@pytest.mark.parametrize("endpoint", ["lean", "quart"])
def test_a_body_that_stalls_is_refused_at_its_deadline(
    rig: Rig, endpoint: str, log_lines: LogLines
) -> None:
    body, headers = _signed(rig)
    with _tls(rig, rig.identity) as tls:
        request = _raw_request(rig, f"/{endpoint}/slow-body", body, headers)
        tls.sendall(request[:-10])  # ten bytes short: the body never completes
        head = _read_answer(tls)
    assert head.startswith(b"http/1.1 408")
    decision = log_lines.wait_for_decision(reason="body-timeout")
    assert decision["endpoint"] == f"{endpoint}-slow"


@pytest.mark.parametrize("endpoint", ["lean", "quart"])
def test_quarts_max_content_length_refuses_before_the_body(rig: Rig, endpoint: str) -> None:
    # Announced over Quart's MAX_CONTENT_LENGTH, under the endpoint's cap: refused at once,
    # not after the body deadline (0.3 s here) while waiting for bytes that never come.
    body, headers = _signed(rig, payload={"type": "invoice.paid", "pad": "x" * 3200})
    assert QUART_MAX_CONTENT_LENGTH < len(body) < 4096
    with _tls(rig, rig.identity) as tls:
        request = _raw_request(rig, f"/{endpoint}/slow-body", body, headers)
        tls.sendall(request[: request.index(b"\r\n\r\n") + 4])
        head = _read_answer(tls)
    assert head.startswith(b"http/1.1 413")
    assert b"\r\nconnection: close" in head


@pytest.mark.asyncio
async def test_the_lean_view_ends_when_the_sender_hangs_up(sender: Sender) -> None:
    # Quart cancels its view on http.disconnect; the lean path must end its own, or the
    # request (and its connection) lives as long as the handler.
    entered = threading.Event()
    release = threading.Event()
    app = Quart(__name__)
    hooks = WebhookReceiver(app, path="/h", keys=[sender.key], require_peer=False)

    @hooks.on_any
    async def held(event: WebhookEvent) -> None:
        entered.set()
        await asyncio.to_thread(release.wait, 10)

    body, headers = sender.request()
    async with app.test_app() as test_app:
        client = test_app.test_client()
        try:
            async with asyncio.timeout(10):  # a liveness bound, not a timing check
                async with client.request("/h", method="POST", headers=headers) as connection:
                    await connection.send(body)
                    await connection.send_complete()
                    assert await asyncio.to_thread(entered.wait, 5)
                    await connection.disconnect()
                # The connection's exit awaited the app: it returned while the handler runs.
                assert not release.is_set()
        finally:
            release.set()


def test_the_lean_path_on_uvloop(rig: Rig, sender: Sender, log_lines: LogLines) -> None:
    seen = Seen()
    config = rig.server.config.replace(loop="uvloop")
    with running_server(build_app(sender, seen), config) as server:
        body, headers = _signed(rig)
        with rig.client() as client:
            url = server.url("/lean")
            assert client.post(url, content=body, headers=headers, auth=AUTH).status_code == 204
            again = client.post(url, content=body, headers=headers, auth=AUTH)
        with rig.client(rig.stranger) as stranger:
            refused = stranger.post(url, content=body, headers=headers, auth=AUTH)
    assert again.headers["webhook-duplicate"] == "true"
    assert refused.status_code == 403
    assert seen.contexts == [("lean", False, "CN=payments", "CN=payments")]


# --------------------------------------------------------------------------- falling back


def _app_with(sender: Sender, setup: Callable[[Quart], None]) -> tuple[Quart, list[bool]]:
    app = Quart(__name__)
    contexts: list[bool] = []
    hooks = WebhookReceiver(app, path="/h", keys=[sender.key], require_peer=False)

    @hooks.on_any
    async def record(event: WebhookEvent) -> None:
        contexts.append(quart.has_request_context())

    setup(app)
    return app, contexts


def _before(app: Quart) -> None:
    app.before_request(lambda: None)


def _after(app: Quart) -> None:
    @app.after_request
    async def add_header(response: quart.Response) -> quart.Response:
        response.headers["X-After"] = "yes"
        return response


def _teardown(app: Quart) -> None:
    app.teardown_request(lambda exc: None)


def _nothing(app: Quart) -> None:
    pass


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("setup", "in_quart"),
    [
        pytest.param(_nothing, False, id="no-hooks-lean"),
        pytest.param(_before, True, id="before-request"),
        pytest.param(_after, True, id="after-request"),
        pytest.param(_teardown, True, id="teardown-request"),
    ],
)
async def test_request_hooks_keep_webhooks_on_quart(
    sender: Sender, setup: Callable[[Quart], None], in_quart: bool
) -> None:
    app, contexts = _app_with(sender, setup)
    body, headers = sender.request()
    response = await app.test_client().post("/h", data=body, headers=headers)
    assert response.status_code == 204
    assert contexts == [in_quart]
    if setup is _after:
        assert response.headers["X-After"] == "yes"


@pytest.mark.asyncio
async def test_a_middleware_mounted_before_the_receiver_keeps_webhooks_on_quart(
    sender: Sender,
) -> None:
    app = Quart(__name__)
    seen_paths: list[str] = []
    inner = app.asgi_app

    async def outer(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen_paths.append(scope["path"])
        await inner(scope, receive, send)

    app.asgi_app = outer  # type: ignore[method-assign]
    hooks = WebhookReceiver(app, path="/h", keys=[sender.key], require_peer=False)
    hooks.on_any(lambda event: None)
    assert app.asgi_app is outer  # not wrapped: the lean path would bypass this middleware
    body, headers = sender.request()
    response = await app.test_client().post("/h", data=body, headers=headers)
    assert response.status_code == 204
    assert seen_paths == ["/h"]
