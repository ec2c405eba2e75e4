"""HTTP/2: a refusal answered before its body arrived affects only its own stream.

RFC 9113 §8.1 lets a server answer before the request is complete, and the client may keep
sending DATA for that stream afterwards. Hypercorn 0.18 forgets an answered stream, and the
next DATA frame for it raised ``KeyError`` in its h2 protocol (pgjones/hypercorn#329): the
whole connection died, and every concurrent request on it was answered 500 without a log
line. Each test below runs a real server and a frame-level h2 client over real mTLS.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx
import pytest
from quart import Quart

from certs_tool import CA
from mtls_hooks.core._events import WebhookEvent
from mtls_hooks.core._signing import HmacSecret, Signer
from mtls_hooks.receiver._receiver import WebhookReceiver
from mtls_hooks.testing import ServerHandle, running_server
from tests.receiver.conftest import LogLines, Sender
from tests.receiver.h2_client import H2Client, StreamResult
from tests.serving.conftest import Identity, LogCollector, Pki

MAX_BODY_BYTES = 4096
BASIC = ("hooks", "h2-pass")
_BASIC_HEADER = "Basic aG9va3M6aDItcGFzcw=="  # base64("hooks:h2-pass")
_PROBLEM = "application/problem+json"


@dataclass
class Gate:
    """Holds the "held" handler until the test releases it (set on the server's thread)."""

    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    handled: list[str] = field(default_factory=list)


def build_app(sender: Sender, gate: Gate) -> Quart:
    app = Quart(__name__)
    app.config.update({"MTLS_HOOKS_KEYS": [sender.key]})
    hooks = WebhookReceiver(app, max_body_bytes=MAX_BODY_BYTES)
    hooks.endpoint("/hooks", name="main")
    hooks.endpoint("/hooks/basic", name="basic", basic_auth=BASIC)
    hooks.endpoint("/hooks/strict", name="strict", allow=["uri:spiffe://test.example/nobody/*"])

    @hooks.on("invoice.paid")
    async def paid(event: WebhookEvent) -> None:
        gate.handled.append(event.id)

    @hooks.on("held")
    async def held(event: WebhookEvent) -> None:
        gate.entered.set()
        await asyncio.to_thread(gate.release.wait, 10)
        gate.handled.append(event.id)

    return app


@dataclass
class Live:
    server: ServerHandle
    pki: Pki
    identity: Identity
    sender: Sender
    gate: Gate

    def client(self) -> H2Client:
        context = self.pki.context(self.identity, http2=True)
        return H2Client(self.server.host, self.server.port, context)

    def signed(self, event_type: str = "invoice.paid", **kwargs: Any) -> tuple[bytes, list[Any]]:
        body, headers = self.sender.request(event_type=event_type, **kwargs)
        return body, list(headers.items())


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, certs_ca: CA, sender: Sender) -> Iterator[Live]:
    pki = Pki.create(tmp_path_factory.mktemp("h2-refusals"), certs_ca)
    identity = pki.identity("h2-sender")
    gate = Gate()
    with running_server(build_app(sender, gate), pki.config(identity)) as server:
        yield Live(server, pki, identity, sender, gate)


class ErrorLog(logging.Handler):
    """Every record at ERROR or above, from any logger and thread, kept as text only.

    Text, not records: a record's traceback would keep frames (and coroutines) alive past the
    test, to warn in a later one.
    """

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def error_log() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def _problem(result: StreamResult) -> dict[str, Any]:
    assert result.headers["content-type"] == [_PROBLEM]
    problem = json.loads(bytes(result.body))
    assert isinstance(problem, dict)
    return problem


class Case(NamedTuple):
    """One refusal on a stream beside others."""

    path: str
    method: str
    extra: dict[str, str]  # headers beyond (or instead of) the signed ones
    sent_first: int | None  # body bytes sent before the answer; None: all, then the answer
    status: int
    reason: str


# Every refusal here is decided before the body has been read (413-streamed after part of
# it), except the control at the end, decided after reading all of it.
_CASES = [
    pytest.param(Case("/hooks", "PUT", {}, 1024, 405, "method-not-allowed"), id="405-method"),
    pytest.param(
        Case("/hooks", "POST", {"content-type": "text/plain"}, 1024, 415, "content-type"),
        id="415",
    ),
    pytest.param(
        Case("/hooks", "POST", {"content-length": "cap+1"}, 1024, 413, "too-large"),
        id="413-content-length",
    ),
    pytest.param(
        Case("/hooks", "POST", {}, MAX_BODY_BYTES + 1024, 413, "too-large"), id="413-streamed"
    ),
    pytest.param(Case("/hooks/strict", "POST", {}, 1024, 403, "identity-not-allowed"), id="403"),
    pytest.param(Case("/hooks/basic", "POST", {}, 1024, 401, "basic-auth"), id="401-basic"),
    pytest.param(
        Case("/hooks", "POST", {"bad-signature": "1"}, None, 401, "bad-signature"),
        id="401-signature-control",
    ),
]


@pytest.mark.parametrize("case", _CASES)
def test_refused_stream_leaves_its_neighbours_alone(
    live: Live, log_lines: LogLines, error_log: ErrorLog, case: Case
) -> None:
    gate = live.gate
    gate.entered.clear()
    gate.release.clear()
    extra = dict(case.extra)
    sent_first = case.sent_first
    signer = Signer([HmacSecret.generate()]) if extra.pop("bad-signature", None) else None
    refused_body, refused_headers = live.signed(signer=signer)
    # JSON allows trailing spaces: a body of exactly the cap, or three times it for the 413
    # decided while streaming.
    over_cap = sent_first is not None and sent_first > MAX_BODY_BYTES
    refused_body = refused_body.ljust(MAX_BODY_BYTES * (3 if over_cap else 1), b" ")
    if extra.get("content-length") == "cap+1":  # announced, and sent: h2 checks the framing
        refused_body = refused_body.ljust(MAX_BODY_BYTES + 1, b" ")
        extra["content-length"] = str(len(refused_body))
    refused_headers = [(k, v) for k, v in refused_headers if k not in extra] + list(extra.items())
    try:
        with live.client() as client:
            held_body, held_headers = live.signed("held")
            held = client.start("/hooks", held_headers, body=held_body)
            client.wait(gate.entered.is_set, "the held handler to start")

            refused = client.start(case.path, refused_headers, method=case.method)
            if sent_first is None:  # the control: the whole body, refused after reading it
                client.send_data(refused, refused_body, end=True)
            else:
                client.send_data(refused, refused_body[:sent_first])
            client.wait_done(refused)
            # The answer is out and the stream forgotten by the server; the client still has
            # body to send, as RFC 9113 §8.1 allows. Hypercorn used to crash on this DATA.
            if sent_first is not None:
                client.send_data(refused, refused_body[sent_first:], end=True)

            # A request opened after that DATA is answered after the server handled it.
            after_body, after_headers = live.signed()
            after = client.start("/hooks", after_headers, body=after_body)
            client.wait_done(after)
            gate.release.set()
            client.wait_done(held)

            assert client.streams[held].status == 204
            assert client.streams[after].status == 204
            assert client.streams[refused].status == case.status
            assert client.streams[refused].reset_code is None
            assert _problem(client.streams[refused])["reason"] == case.reason
            assert client.terminated is None
            assert not client.eof
    finally:
        gate.release.set()
    statuses = [d["status"] for d in log_lines.decisions]
    assert sorted(statuses) == sorted([204, 204, case.status])
    assert error_log.lines == []


_KINDS = ("valid", "415", "405", "413-length", "413-streamed", "403", "401-basic", "401-sig")
_EXPECTED = {
    "valid": (204, None),
    "415": (415, "content-type"),
    "405": (405, "method-not-allowed"),
    "413-length": (413, "too-large"),
    "413-streamed": (413, "too-large"),
    "403": (403, "identity-not-allowed"),
    "401-basic": (401, "basic-auth"),
    "401-sig": (401, "bad-signature"),
}


def _fuzz_request(live: Live, kind: str) -> tuple[str, str, list[Any], bytes]:
    signer = Signer([HmacSecret.generate()]) if kind == "401-sig" else None
    body, headers = live.signed(signer=signer)
    path, method = "/hooks", "POST"
    if kind == "415":
        headers = [(k, "text/plain" if k == "content-type" else v) for k, v in headers]
    elif kind == "405":
        method = "PATCH"
    elif kind == "413-length":
        body = body.ljust(MAX_BODY_BYTES + 1, b" ")
        headers.append(("content-length", str(len(body))))
    elif kind == "413-streamed":
        body = body.ljust(MAX_BODY_BYTES * 2, b" ")
    elif kind == "403":
        path = "/hooks/strict"
    elif kind == "401-basic":
        path = "/hooks/basic"
    elif kind == "valid" and random.random() < 0.5:
        path = "/hooks/basic"
        headers.append(("authorization", _BASIC_HEADER))
    return path, method, headers, body


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_mixed_streams_on_one_connection(
    live: Live, log_lines: LogLines, error_log: ErrorLog, seed: int
) -> None:
    """50 streams of every kind, their DATA frames interleaved at random, some cancelled."""
    rng = random.Random(seed)
    with live.client() as client:
        pending: dict[int, memoryview] = {}
        kinds: dict[int, str] = {}
        cancelled: set[int] = set()
        for _ in range(50):
            kind = rng.choice(_KINDS)
            path, method, headers, body = _fuzz_request(live, kind)
            stream = client.start(path, headers, method=method)
            kinds[stream] = kind
            pending[stream] = memoryview(body)
            # Between openings, push a few random slices of the open bodies.
            for _ in range(rng.randrange(4)):
                if not pending:
                    break
                target = rng.choice(list(pending))
                size = rng.choice((1, 512, 1500, 4096))
                chunk, rest = pending[target][:size], pending[target][size:]
                if rng.random() < 0.03:
                    client.reset(target)
                    cancelled.add(target)
                    del pending[target]
                    continue
                client.send_data(target, bytes(chunk), end=not rest)
                if rest:
                    pending[target] = rest
                else:
                    del pending[target]
        for stream, rest in pending.items():
            client.send_data(stream, bytes(rest), end=True)
        answered = [s for s in kinds if s not in cancelled]
        client.wait_done(*answered)
        for stream in answered:
            status, reason = _EXPECTED[kinds[stream]]
            result = client.streams[stream]
            assert result.status == status, (kinds[stream], result)
            if reason is not None:
                assert _problem(result)["reason"] == reason
        assert client.terminated is None
        assert not client.eof
    assert 500 not in [d["status"] for d in log_lines.decisions]
    assert error_log.lines == []


# --------------------------------------------------------------------------- every 500 logged


async def _unanswering_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A raw ASGI app that ends without answering: cancelled, or by an exception."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/cancelled":
        raise asyncio.CancelledError  # as when the connection's task group is torn down
    raise RuntimeError("boom")


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "http2"])
@pytest.mark.parametrize(
    ("path", "reason"), [("/cancelled", "cancelled"), ("/raises", "RuntimeError")]
)
def test_a_500_hypercorn_sends_is_logged(live: Live, http2: bool, path: str, reason: str) -> None:
    context = live.pki.context(live.identity, http2=http2)
    config = live.pki.config(live.identity)
    with (
        LogCollector("mtls_hooks.serving", wake_on="status=500") as lines,
        running_server(_unanswering_app, config) as server,
        httpx.Client(verify=context, http2=http2, timeout=10) as client,
    ):
        response = client.post(server.url(path), content=b"{}")
    assert response.status_code == 500
    assert lines.matched.is_set()
    assert len(lines.lines) == 1
    line = lines.lines[0]
    assert line.startswith("event=server_error status=500 method=POST")
    assert f'path="{path}"' in line
    assert line.endswith(f"reason={reason}")


class _Unhashable(str):
    """An event type that cannot be looked up: a fault inside the receiver, after the checks."""

    __slots__ = ()

    def __hash__(self) -> int:
        raise RuntimeError("not hashable")


@pytest.mark.asyncio
async def test_an_internal_fault_is_a_logged_problem_500(
    sender: Sender, log_lines: LogLines
) -> None:
    app = Quart(__name__)
    WebhookReceiver(
        app,
        path="/hooks",
        keys=[sender.key],
        require_peer=False,
        event_type=lambda payload: _Unhashable("invoice.paid"),
    )
    body, headers = sender.request()
    response = await app.test_client().post("/hooks", data=body, headers=headers)
    assert response.status_code == 500
    assert response.content_type == _PROBLEM
    problem = await response.get_json()
    assert problem["reason"] == "internal-error"
    assert "not hashable" not in json.dumps(problem)
    decision = log_lines.last()
    assert decision["status"] == 500
    assert decision["outcome"] == "internal-error"
    assert decision["event_id"] == headers["webhook-id"]
    assert decision["reason"] == "RuntimeError"


class _Refusals(logging.Handler):
    """Sets ``seen`` when the receiver logs a refusal (from the server's thread)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "webhook", {}).get("outcome") == "refused":
            self.seen.set()


@pytest.mark.parametrize("kind", ["415", "413-streamed"])
def test_httpx_sees_its_refusal_and_keeps_its_connection(
    live: Live, error_log: ErrorLog, kind: str
) -> None:
    """httpx over HTTP/2 (as our sync sender uses it): the refusal arrives while it streams.

    One request at a time: httpcore's threads share one read lock, so a thread waiting for
    its own answer delays the others' (pydantic/httpx2#1133, encode/httpcore#1022); the
    frame-level tests above cover concurrency.
    """
    refusals = _Refusals()
    logger = logging.getLogger("mtls_hooks.receiver")
    body, headers = live.sender.request()
    if kind == "415":
        headers["content-type"] = "text/plain"
    body = body.ljust(MAX_BODY_BYTES * 2, b" ")
    first = MAX_BODY_BYTES + 1 if kind == "413-streamed" else 1024

    def streamed() -> Iterator[bytes]:
        yield body[:first]
        # The rest only once the server has answered: DATA for an answered stream.
        assert refusals.seen.wait(10)
        for start in range(first, len(body), 1024):
            yield body[start : start + 1024]

    context = live.pki.context(live.identity, http2=True)
    logger.addHandler(refusals)
    try:
        with httpx.Client(verify=context, http2=True, timeout=10) as client:
            response = client.post(live.server.url("/hooks"), content=streamed(), headers=headers)
            valid_body, valid_headers = live.sender.request()
            url = live.server.url("/hooks")
            after = client.post(url, content=valid_body, headers=valid_headers)
    finally:
        logger.removeHandler(refusals)
    assert response.http_version == "HTTP/2"
    assert response.status_code == int(kind[:3])
    assert response.headers["content-type"] == _PROBLEM
    assert after.status_code == 204
    assert error_log.lines == []
