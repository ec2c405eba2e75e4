"""The smallest sender: one signed webhook over mTLS, to minimal_receiver.py.

Run it beside the certs/ directory that ``certs-tool quickstart certs`` wrote::

    WEBHOOK_SECRET=whsec_... python examples/minimal_sender.py
"""

import os

from mtls_hooks import WebhookSender

url = os.environ.get("WEBHOOK_URL", "https://localhost:8443/webhooks")
with WebhookSender(
    signing_keys=os.environ["WEBHOOK_SECRET"],
    certfile="certs/client.pem",
    keyfile="certs/client-key.pem",
    ca_file="certs/ca.pem",
) as sender:
    print(sender.send(url, {"invoice": "in_1", "amount": 4200}, event_type="invoice.paid"))
