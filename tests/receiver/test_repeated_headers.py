"""A repeated webhook-id, webhook-timestamp or webhook-signature header is refused.

The receiver used to verify the first of two ``webhook-timestamp`` lines and ignore the
other, where the library's own ``Verifier`` refuses two different values as malformed. Each
case below puts the valid value first, so taking the first one (the old behaviour) would
accept the request: the refusal is what the tests check, over HTTP/1.1 and HTTP/2 on a real
server and through Quart's test client.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from quart import Quart
from werkzeug.datastructures import Headers

from certs_tool import CA, IssuedCert
from mtls_hooks.core._events import WebhookEvent
from mtls_hooks.core._signing import HmacSecret, Signer
from mtls_hooks.receiver._pipeline import _webhook_headers
from mtls_hooks.receiver._receiver import WebhookReceiver
from mtls_hooks.testing import ServerHandle, running_server
from tests.receiver.conftest import LogLines, Sender, tls_scope
from tests.serving.conftest import Identity, Pki

HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def _second_value(name: str, headers: dict[str, str], sender: Sender, body: bytes) -> str:
    """A different, well-formed value for ``name``."""
    if name == "webhook-id":
        return Signer.new_webhook_id()
    if name == "webhook-timestamp":
        return str(int(time.time()) - 3600)
    other = Signer([HmacSecret.generate()]).sign(
        body, webhook_id=headers["webhook-id"], timestamp=int(headers["webhook-timestamp"])
    )
    return other.signature


def _repeated(
    sender: Sender, name: str, *, same: bool
) -> tuple[bytes, list[tuple[str, str]], dict[str, str]]:
    """A valid signed delivery, then ``name`` once more (the valid value stays first)."""
    body, headers = sender.request()
    again = headers[name] if same else _second_value(name, headers, sender, body)
    return body, [*headers.items(), (name, again)], headers


@dataclass
class Live:
    server: ServerHandle
    pki: Pki
    identity: Identity
    sender: Sender
    handled: list[str]

    def client(self, *, http2: bool) -> httpx.Client:
        context = self.pki.context(self.identity, http2=http2)
        return httpx.Client(verify=context, http2=http2, timeout=10)


def _app(sender: Sender, handled: list[str]) -> Quart:
    app = Quart(__name__)
    hooks = WebhookReceiver(app, path="/hooks", keys=[sender.key])

    @hooks.on("invoice.paid")
    async def paid(event: WebhookEvent) -> None:
        handled.append(event.id)

    return app


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, certs_ca: CA, sender: Sender) -> Iterator[Live]:
    pki = Pki.create(tmp_path_factory.mktemp("repeated-headers"), certs_ca)
    identity = pki.identity("repeat-sender")
    handled: list[str] = []
    with running_server(_app(sender, handled), pki.config(identity)) as server:
        yield Live(server, pki, identity, sender, handled)


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "http2"])
@pytest.mark.parametrize("same", [True, False], ids=["same-value", "different-value"])
@pytest.mark.parametrize("name", HEADERS)
def test_repeated_header_is_refused_over_mtls(
    live: Live, log_lines: LogLines, name: str, same: bool, http2: bool
) -> None:
    body, repeated, single = _repeated(live.sender, name, same=same)
    with live.client(http2=http2) as client:
        response = client.post(live.server.url("/hooks"), content=body, headers=repeated)
        assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["reason"] == "malformed-header"
        assert name in problem["detail"]
        assert log_lines.last()["reason"] == "malformed-header"
        assert single["webhook-id"] not in live.handled
        # The twin: the same delivery with each header once is handled.
        twin = client.post(live.server.url("/hooks"), content=body, headers=single)
    assert twin.status_code == 204
    assert live.handled[-1] == single["webhook-id"]


@pytest.mark.asyncio
@pytest.mark.parametrize("same", [True, False], ids=["same-value", "different-value"])
@pytest.mark.parametrize("name", HEADERS)
async def test_repeated_header_is_refused_in_process(
    sender: Sender, sender_cert: IssuedCert, log_lines: LogLines, name: str, same: bool
) -> None:
    handled: list[str] = []
    client = _app(sender, handled).test_client()
    scope = tls_scope(sender_cert)
    body, repeated, single = _repeated(sender, name, same=same)
    response = await client.post("/hooks", data=body, headers=Headers(repeated), scope_base=scope)
    assert response.status_code == 401
    assert (await response.get_json())["reason"] == "malformed-header"
    assert log_lines.last()["status"] == 401
    assert handled == []
    twin = await client.post("/hooks", data=body, headers=single, scope_base=scope)
    assert twin.status_code == 204
    assert handled == [single["webhook-id"]]


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param([(b"webhook-id", b"a"), (b"Webhook-Id", b"a")], id="case-differs"),
        pytest.param([(b"WEBHOOK-TIMESTAMP", b"1"), (b"webhook-timestamp", b"2")], id="upper"),
    ],
)
def test_repeated_header_names_compare_without_case(raw: list[tuple[bytes, bytes]]) -> None:
    # Hypercorn lower-cases header names, but ASGI only says a server "should".
    refusal = _webhook_headers(raw)
    assert not isinstance(refusal, dict)
    assert refusal.reason == "malformed-header"


def test_header_values_are_read_once_each() -> None:
    raw = [
        (b"host", b"x"),
        (b"Webhook-Id", b"msg_1"),
        (b"webhook-timestamp", b"1700000000"),
        (b"webhook-signature", b"v1,abc"),
    ]
    assert _webhook_headers(raw) == {
        "webhook-id": "msg_1",
        "webhook-timestamp": "1700000000",
        "webhook-signature": "v1,abc",
    }
