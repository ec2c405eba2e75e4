"""The smallest receiver: verified webhooks over pinned mTLS, one handler."""

import os

from quart import Quart

from mtls_hooks._events import WebhookEvent
from mtls_hooks._receiver import WebhookReceiver

app = Quart(__name__)
hooks = WebhookReceiver(app, path="/webhooks", keys=[os.environ["WEBHOOK_SECRET"]])


@hooks.on("invoice.paid")
async def invoice_paid(event: WebhookEvent) -> None:
    print(f"invoice paid: {event.payload['data']} from {event.peer}", flush=True)
