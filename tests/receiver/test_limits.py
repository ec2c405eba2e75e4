"""The body cap at its boundary, on a real server: exactly ``max_body_bytes`` passes, one more
byte is 413, whether the size is announced (Content-Length) or only counted while the body
streams in (HTTP/1.1 chunked, HTTP/2 DATA frames without a length).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from quart import Quart

from certs_tool import CA
from mtls_hooks.core._events import WebhookEvent
from mtls_hooks.receiver._receiver import WebhookReceiver
from mtls_hooks.testing import ServerHandle, running_server
from tests.receiver.conftest import LogLines, Sender
from tests.serving.conftest import Identity, Pki

MAX_BODY_BYTES = 2048
_HEAD = b'{"type": "invoice.paid", "pad": "'
_TAIL = b'"}'


def body_of(size: int) -> bytes:
    """A JSON webhook body of exactly ``size`` bytes."""
    body = _HEAD + b"x" * (size - len(_HEAD) - len(_TAIL)) + _TAIL
    assert len(body) == size
    return body


@dataclass
class Capped:
    server: ServerHandle
    pki: Pki
    client_identity: Identity
    sender: Sender
    bodies: list[bytes] = field(default_factory=list)

    def client(self, *, http2: bool) -> httpx.Client:
        context = self.pki.context(self.client_identity, http2=http2)
        return httpx.Client(verify=context, http2=http2, timeout=10)


@pytest.fixture(scope="module")
def capped(
    tmp_path_factory: pytest.TempPathFactory, certs_ca: CA, sender: Sender
) -> Iterator[Capped]:
    pki = Pki.create(tmp_path_factory.mktemp("limits-pki"), certs_ca)
    identity = pki.identity("limits-sender")
    app = Quart(__name__)
    hooks = WebhookReceiver(app, path="/capped", keys=[sender.key], max_body_bytes=MAX_BODY_BYTES)
    with running_server(app, pki.config(identity)) as server:
        capped = Capped(server, pki, identity, sender)

        @hooks.on("invoice.paid")
        async def record(event: WebhookEvent) -> None:
            capped.bodies.append(event.raw_body)

        yield capped


def _pieces(body: bytes) -> Iterator[bytes]:
    # Uneven pieces, the last one carrying the byte that crosses the cap.
    yield body[:700]
    yield body[700:1900]
    yield body[1900:]


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "streamed"])
@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "http2"])
@pytest.mark.parametrize(
    ("size", "status"),
    [
        pytest.param(MAX_BODY_BYTES, 204, id="exactly-the-cap"),
        pytest.param(MAX_BODY_BYTES + 1, 413, id="one-byte-over"),
    ],
)
def test_body_cap_boundary(
    capped: Capped, log_lines: LogLines, *, size: int, status: int, http2: bool, streamed: bool
) -> None:
    body = body_of(size)
    _, headers = capped.sender.request(body=body)
    before = len(capped.bodies)
    with capped.client(http2=http2) as client:
        response = client.post(
            capped.server.url("/capped"),
            content=_pieces(body) if streamed else body,
            headers=headers,
        )
        assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
        request_headers = response.request.headers
    # The framing the case is about, as the client sent it.
    if streamed:
        # HTTP/1.1 sends it chunked; HTTP/2 sends DATA frames (httpcore drops the header).
        assert "content-length" not in request_headers
        assert request_headers["transfer-encoding"] == "chunked"
    else:
        assert request_headers["content-length"] == str(size)
    assert response.status_code == status
    decision = log_lines.last()
    if status == 204:
        assert capped.bodies[before:] == [body]
        assert decision["outcome"] == "handled"
        return
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["reason"] == "too-large"
    assert f"at most {MAX_BODY_BYTES} bytes" in problem["detail"]
    assert decision["reason"] == "too-large"
    assert len(capped.bodies) == before
