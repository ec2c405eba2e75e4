"""The app each receiver "node" of ``test_two_nodes.py`` serves with ``mtls-hooks serve``.

Its store comes from ``MTLS_HOOKS_DEDUPE_URL``; every handler run sleeps longer than a round
trip, then appends its webhook id to the file ``NODE_RUNS`` names (one short ``O_APPEND``
write per run, atomic across processes), so the test counts runs across both nodes.
"""

from __future__ import annotations

import asyncio
import os

from quart import Quart

from mtls_hooks.core._events import WebhookEvent
from mtls_hooks.receiver._receiver import WebhookReceiver

app = Quart(__name__)
hooks = WebhookReceiver(app, path="/hooks")


@hooks.on_any
async def run_once(event: WebhookEvent) -> None:
    await asyncio.sleep(float(os.environ["NODE_HANDLER_S"]))
    fd = os.open(os.environ["NODE_RUNS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{event.id} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
