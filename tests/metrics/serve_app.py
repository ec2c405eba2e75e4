"""The app ``tests/metrics/test_serve_metrics.py`` serves with ``mtls-hooks serve --workers 2``."""

from __future__ import annotations

import os

from quart import Quart

from mtls_hooks.core._events import WebhookEvent
from mtls_hooks.receiver._receiver import WebhookReceiver

app = Quart(__name__)
app.config["MTLS_HOOKS_KEYS"] = [os.environ["METRICS_TEST_KEY"]]
app.config["MTLS_HOOKS_DEDUPE_PATH"] = os.environ["METRICS_TEST_DEDUPE"]
hooks = WebhookReceiver(app)
orders = hooks.endpoint("/hooks", name="orders")


@orders.on_any
async def record(event: WebhookEvent) -> None:
    """Acknowledge every event."""
