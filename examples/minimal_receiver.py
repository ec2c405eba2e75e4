"""The smallest receiver: verified webhooks over pinned mTLS, one handler.

    certs-tool quickstart certs && export WEBHOOK_SECRET=whsec_...
    mtls-hooks serve examples.minimal_receiver:app \\
        --cert certs/server.pem --key certs/server-key.pem --client-ca certs/ca.pem \\
        --pin "$(certs-tool pin certs/client.pem)"
"""

import os

from quart import Quart

from mtls_hooks import WebhookEvent, WebhookReceiver

app = Quart(__name__)
hooks = WebhookReceiver(app, path="/webhooks", keys=[os.environ["WEBHOOK_SECRET"]])


@hooks.on("invoice.paid")
async def invoice_paid(event: WebhookEvent) -> None:
    print(f"invoice paid: {event.payload['data']} from {event.peer}", flush=True)
