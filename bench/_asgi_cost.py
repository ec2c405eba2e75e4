"""The CPU a request costs inside the app alone: ASGI calls in one process, no sockets.

On a machine that other work shares, end-to-end rates swing with the time slice the server
gets. A tight loop of ASGI calls on one event loop, timed in process CPU time and by its best
repetition (sharing the machine only ever slows a repetition, as ``timeit`` argues), with the
apps taking turns, measures what the webhook verification adds to a bare Quart request far
more steadily. The scope carries the ASGI
``tls`` extension as our server fills it, so identity rules run as they do when served.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from bench._servers import SIGNING_SECRET, AppFactory, BenchPki
from bench.loadgen import json_body

__all__ = ["asgi_us_per_request"]

Message = dict[str, Any]


def _headers(body: bytes, signed: dict[str, str] | None) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"host", b"localhost"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    headers += [(k.encode(), v.encode()) for k, v in (signed or {}).items()]
    return headers


def _scopes(pki: BenchPki, count: int, *, signed: bool, tag: str) -> list[dict[str, Any]]:
    from mtls_hooks.core._keys_signing import HmacSecret
    from mtls_hooks.core._signing import Signer

    body = json_body()
    client_pem = Path(pki.client_cert).read_text(encoding="ascii")
    tls = {
        "server_cert": None,
        "client_cert_chain": [client_pem],
        "client_cert_name": "CN=bench",
        "client_cert_error": None,
        "tls_version": 0x0304,
        "cipher_suite": 0x1301,
    }
    signer = Signer([HmacSecret.parse(SIGNING_SECRET)])
    now = int(time.time())
    scopes = []
    for index in range(count):
        extra = (
            signer.sign(body, webhook_id=f"msg_{tag}_{index}", timestamp=now).as_dict()
            if signed
            else None
        )
        scopes.append(
            {
                "type": "http",
                "asgi": {"version": "3.0", "spec_version": "2.3"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "https",
                "path": "/",
                "raw_path": b"/",
                "query_string": b"",
                "root_path": "",
                "headers": _headers(body, extra),
                "client": ("127.0.0.1", 50000),
                "server": ("127.0.0.1", 8443),
                "extensions": {"tls": tls},
                "state": {},
            }
        )
    return scopes


async def _drive(app: Any, scopes: list[dict[str, Any]], body: bytes) -> tuple[float, int]:
    statuses = 0
    request = {"type": "http.request", "body": body, "more_body": False}
    sent_body = False
    never = asyncio.Event()

    async def receive() -> Message:
        # The body once; then nothing until the app is done (a disconnect would cancel it).
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return request
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal statuses
        if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
            statuses += 1

    call: Callable[[dict[str, Any], Any, Any], Awaitable[None]] = app
    # CPU time of this process, not wall time: a time slice lost to other work is not counted.
    started = time.process_time()
    for scope in scopes:
        sent_body = False
        await call(scope, receive, send)
    return time.process_time() - started, statuses


def asgi_us_per_request(
    apps: Sequence[tuple[str, AppFactory, bool]], pki: BenchPki, *, requests: int, repeats: int
) -> dict[str, float]:
    """Best-of-``repeats`` microseconds per request of each app, ASGI in-process.

    Args:
        apps: ``(name, factory, signed)``; signed apps get Standard Webhooks headers.
        pki: the certificates (the client certificate goes into the ``tls`` extension).
        requests: requests per repetition.
        repeats: repetitions; the apps take turns, so a busy moment hits them all alike.

    Returns:
        Microseconds per request, by app name.

    Raises:
        RuntimeError: a request was not answered 2xx (the measurement would be wrong).
    """
    body = json_body()

    async def main() -> dict[str, float]:
        built = [(name, factory(pki), signed) for name, factory, signed in apps]
        for _name, app, _signed in built:
            await app.startup()
        try:
            best = {name: float("inf") for name, _app, _signed in built}
            for repeat in range(repeats + 1):  # repetition 0 warms caches up, untimed
                for name, app, signed in built:
                    # Fresh ids every repetition: a replayed id takes the dedupe shortcut.
                    scopes = _scopes(pki, requests, signed=signed, tag=f"asgi{repeat}")
                    elapsed, ok = await _drive(app, scopes, body)
                    if ok != requests:
                        msg = f"{name}: {ok}/{requests} in-process requests answered 2xx"
                        raise RuntimeError(msg)
                    if repeat:
                        best[name] = min(best[name], elapsed)
            return {name: 1e6 * elapsed / requests for name, elapsed in best.items()}
        finally:
            for _name, app, _signed in built:
                await app.shutdown()

    return asyncio.run(main())
