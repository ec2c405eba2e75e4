"""Inbox mode: the sender hears 202 as soon as its webhook is stored; handlers run after.

A handler that calls slow systems may outlast the sender's 15-30 s timeout, and the sender
then retries an event we already have. In inbox mode the endpoint runs every check (mTLS
identity, signature, timestamp, size, JSON), commits the verified event to a durable inbox
(SQLite here, PostgreSQL across machines) and answers ``202 Accepted`` at once. The
handlers run from the inbox, in the server's workers or in ``mtls-hooks process-inbox``,
with retries, backoff and a dead letter; a crash after the 202 loses nothing::

    export WEBHOOK_SECRET=whsec_... MTLS_HOOKS_INBOX_URL=sqlite:///inbox.sqlite3
    mtls-hooks serve examples.receiver_inbox:app \\
        --cert certs/server.pem --key certs/server-key.pem --client-ca certs/ca.pem \\
        --pin "$(certs-tool pin certs/client.pem)"

    # or run the handlers apart from the server:
    MTLS_HOOKS_INBOX_CONCURRENCY=0 mtls-hooks serve examples.receiver_inbox:app ...
    mtls-hooks process-inbox examples.receiver_inbox:app
    mtls-hooks inbox status
"""

import os

from quart import Quart

from mtls_hooks import WebhookEvent, WebhookReceiver

app = Quart(__name__)
hooks = WebhookReceiver(app, path="/webhooks", keys=[os.environ["WEBHOOK_SECRET"]], mode="inbox")


@hooks.on("invoice.paid")
async def invoice_paid(event: WebhookEvent) -> None:
    # Runs from the inbox, at least once: key side effects on event.id. Raising retries it
    # (1 s, 2 s, 4 s ... up to 15 min apart; after 20 attempts it waits in the dead letter
    # for `mtls-hooks inbox retry`).
    subject = event.peer.subject if event.peer else "-"
    print(f"handled {event.type} {event.id} from {subject}", flush=True)
