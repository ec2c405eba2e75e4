"""Apps served by the serving tests; importable as ``tests.serving.apps:<name>`` by workers."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from quart import Quart, request, websocket

from mtls_hooks.receiver._authz import current_peer, require_peer

BILLING_SPIFFE_ID = "spiffe://test.example/billing"

app = Quart(__name__)


def _describe(scope: Mapping[str, Any]) -> dict[str, Any]:
    peer = current_peer()
    tls = scope["extensions"]["tls"]
    return {
        "subject": peer.subject,
        "common_name": peer.common_name,
        "spki": peer.spki_pin,
        "pid": os.getpid(),
        "tls_keys": sorted(tls),
        "server_cert": tls["server_cert"],
        "tls_version": tls["tls_version"],
        "cipher_suite": tls["cipher_suite"],
        "chain_len": len(tls["client_cert_chain"]),
    }


@app.route("/whoami", methods=["GET", "POST"])
async def whoami() -> dict[str, Any]:
    body = await request.get_data()
    return {
        **_describe(request.scope),
        "http_version": request.http_version,
        "caller": request.headers.get("x-caller"),
        "body_bytes": len(body),
    }


@app.get("/billing")
@require_peer(allow=[f"uri:{BILLING_SPIFFE_ID}"])
async def billing() -> dict[str, Any]:
    return {"ok": True, "subject": current_peer().subject}


@app.websocket("/ws")
async def ws() -> None:
    await websocket.accept()
    await websocket.send(json.dumps(_describe(websocket.scope)))


async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A bare ASGI app: proves ``tls`` reaches the scope without Quart in between."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    tls = scope.get("extensions", {}).get("tls")
    body = json.dumps({"type": scope["type"], "tls": tls}).encode()
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": body.decode()})
        await send({"type": "websocket.close", "code": 1000})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
