"""The example receiver: two event handlers, and identity rules per route.

The TLS handshake already refused every client that is not pinned (``--pin``); routes narrow
that further: /webhooks/billing admits only the billing service, /admin/whoami only ops::

    WEBHOOK_SECRET=whsec_... mtls-hooks serve examples.receiver_app:app \\
        --cert server.pem --key server-key.pem --client-ca ca.pem --pin sha256/...
"""

import os

from quart import Quart

from mtls_hooks import WebhookEvent, WebhookReceiver, current_peer, require_peer

# Several workers must share one dedupe store to see each other's webhook-ids: set
# MTLS_HOOKS_DEDUPE_PATH=/var/lib/.../dedupe.sqlite3 (read from the environment like every
# MTLS_HOOKS_* receiver setting); without it each worker remembers ids in memory.
app = Quart(__name__)
hooks = WebhookReceiver(app, path="/webhooks", keys=[os.environ["WEBHOOK_SECRET"]])
# Any pinned client may post to /webhooks; only the billing service to /webhooks/billing.
hooks.endpoint("/webhooks/billing", name="billing", allow=["uri:spiffe://example.org/billing"])


@hooks.on("invoice.paid")
async def invoice_paid(event: WebhookEvent) -> None:
    print(f"handled {event.type} {event.id} from {event.peer}", flush=True)
    # Returning None acknowledges with 204; slow work belongs in a queue keyed by event.id.


@hooks.on("customer.created")
def customer_created(event: WebhookEvent) -> None:  # a plain function runs in a thread
    print(f"handled {event.type} {event.id} from {event.peer}", flush=True)


@app.get("/admin/whoami")
@require_peer(allow=["uri:spiffe://example.org/ops"])
async def whoami() -> dict[str, str]:
    return {"peer": str(current_peer())}
