"""What every request carries: the constant headers, the signature's, and never a cookie.

Both twins hold the constant headers (ours and the caller's ``headers=``) on their HTTP
client and pass only the three signature headers per request; these tests pin the result on
the wire, whichever way it is built.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from mtls_hooks.sender._async import AsyncWebhookSender
from mtls_hooks.sender._results import DeliveryResult
from mtls_hooks.sender._sync import WebhookSender
from tests.sender.conftest import KINDS, SECRET, SenderPki
from tests.sender.scripted import Action, ScriptedServer, Status

Serve = Callable[..., ScriptedServer]


# The async twin over httpx too (http2=True; HTTP/1.1 here: the scripted server offers only
# http/1.1 by ALPN).
PATHS = [*KINDS, pytest.param("async-httpx", id="async-httpx")]


def _http1_server(serve: Serve, pki: SenderPki, script: list[Action]) -> ScriptedServer:
    context = pki.server_context()
    context.set_alpn_protocols(["http/1.1"])  # the scripted server speaks HTTP/1.1 only
    return serve(script, context)


def _send_twice(kind: str, kwargs: dict[str, Any], url: str) -> list[DeliveryResult]:
    """Two deliveries through one sender (one pooled connection)."""
    if kind == "async-httpx":
        kwargs = {**kwargs, "http2": True}
    if kind == "sync":
        with WebhookSender(**kwargs) as sender:
            return [sender.send(url, {"n": n}) for n in range(2)]

    async def main() -> list[DeliveryResult]:
        async with AsyncWebhookSender(**kwargs) as sender:
            return [await sender.send(url, {"n": n}) for n in range(2)]

    return asyncio.run(main())


@pytest.mark.parametrize("kind", PATHS)
def test_constant_headers_and_signature_on_every_request(
    kind: str, pki: SenderPki, serve: Serve
) -> None:
    server = _http1_server(serve, pki, [Status(200), Status(200)])
    # A caller's header named like a signature header must not replace the signature's.
    extra = {"X-Tenant": "acme", "Webhook-Id": "msg_forged", "Webhook-Signature": "v1,forged"}
    kwargs = {"signing_keys": SECRET, **pki.client(), "headers": extra}
    results = _send_twice(kind, kwargs, server.url())
    assert len(server.requests) == 2
    for result, request in zip(results, server.requests, strict=True):
        headers = request.headers
        assert headers["x-tenant"] == "acme"
        assert headers["content-type"] == "application/json"
        assert headers["user-agent"].startswith("mtls-hooks/")
        # Only the start of an answer is kept, so no compressed one is asked for.
        assert headers["accept-encoding"] == "identity"
        assert headers["webhook-id"] == result.webhook_id != "msg_forged"
        assert Webhook(SECRET).verify(request.body, headers) == {"n": results.index(result)}
    assert results[0].webhook_id != results[1].webhook_id


@pytest.mark.parametrize("kind", PATHS)
def test_a_receivers_cookie_never_comes_back(kind: str, pki: SenderPki, serve: Serve) -> None:
    cookie = Status(200, headers={"set-cookie": "sid=s3cret; Path=/"})
    server = _http1_server(serve, pki, [cookie, Status(200)])
    # A host name: aiohttp's default cookie jar already ignores cookies of an IP address.
    url = server.url().replace("127.0.0.1", "localhost")
    results = _send_twice(kind, {"signing_keys": SECRET, **pki.client()}, url)
    assert all(result.ok for result in results)
    assert len(server.requests) == 2
    assert "cookie" not in server.requests[1].headers
