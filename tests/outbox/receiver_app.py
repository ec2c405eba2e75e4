"""The receiver the outbox tests deliver to: a real WebhookReceiver that writes what it saw.

Served in-process (:func:`build_app`) or by ``mtls-hooks serve tests.outbox.receiver_app:app``
with its settings in the environment:

* ``OUTBOX_TEST_SECRET``: the signing key; ``MTLS_HOOKS_DEDUPE_PATH``: the SQLite dedupe;
* ``OUTBOX_TEST_LOG``: a file that gets one line per event: ``request <id>`` when a request
  enters, ``overlap <id>`` when another request for the same id is still in flight here,
  ``entered <id>`` when the handler starts and ``handled <id>`` when it ends;
* ``OUTBOX_TEST_HOLD``: while this file exists, handlers wait (a request held open).

Extra routes outside the receiver answer fixed statuses: ``/gone`` 410, ``/broken`` 500.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from quart import Quart

from mtls_hooks.core._events import WebhookEvent
from mtls_hooks.receiver._receiver import WebhookReceiver

Scope = MutableMapping[str, Any]
ASGI = Callable[[Scope, Any, Any], Awaitable[None]]


def _append(log: Path, line: str) -> None:
    # One write of one short line with O_APPEND: whole lines, even from several processes.
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


class Recording:
    """ASGI middleware that records request entry and overlaps per webhook-id."""

    def __init__(self, app: ASGI, log: Path) -> None:
        self.app = app
        self.log = log
        self.in_flight: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        webhook_id = headers.get(b"webhook-id", b"").decode()
        if not webhook_id:
            await self.app(scope, receive, send)
            return
        count = self.in_flight.get(webhook_id, 0)
        _append(self.log, f"request {webhook_id}")
        if count:
            _append(self.log, f"overlap {webhook_id}")
        self.in_flight[webhook_id] = count + 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight[webhook_id] -= 1


def build_app(
    secret: str,
    log: Path,
    hold: Path | None = None,
    handle_s: float = 0.0,
    only_secret: str | None = None,
) -> Any:
    """The recording receiver app; ``/hooks/only`` trusts ``only_secret`` alone."""
    app = Quart(__name__)
    hooks = WebhookReceiver(app, path="/hooks", keys=[secret])
    if only_secret is not None:
        hooks.endpoint("/hooks/only", name="only", keys=[only_secret])

    @hooks.on_any
    async def handle(event: WebhookEvent) -> None:
        _append(log, f"entered {event.id}")
        _append(log, f"peer {event.id}={event.peer}")
        # The gate is a file because the test runs in another process: poll it.
        while hold is not None and await asyncio.to_thread(hold.exists):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if handle_s:
            await asyncio.sleep(handle_s)  # widens the window in which an overlap would show
        _append(log, f"handled {event.id}")

    @app.post("/gone")
    async def gone() -> tuple[str, int]:
        return "gone", 410

    @app.post("/broken")
    async def broken() -> tuple[str, int]:
        return "broken", 500

    return Recording(app, log)  # type: ignore[arg-type]


def read_log(log: Path) -> dict[str, list[str]]:
    """The log's ids by kind: ``{"handled": [...], "overlap": [...], ...}``."""
    kinds: dict[str, list[str]] = {
        "request": [],
        "overlap": [],
        "entered": [],
        "handled": [],
        "peer": [],
    }
    if log.exists():
        for line in log.read_text().splitlines():
            kind, _, webhook_id = line.partition(" ")
            kinds[kind].append(webhook_id)
    return kinds


if "OUTBOX_TEST_SECRET" in os.environ:
    _hold = os.environ.get("OUTBOX_TEST_HOLD")
    app = build_app(
        os.environ["OUTBOX_TEST_SECRET"],
        Path(os.environ["OUTBOX_TEST_LOG"]),
        Path(_hold) if _hold else None,
        float(os.environ.get("OUTBOX_TEST_HANDLE_S", "0")),
    )
