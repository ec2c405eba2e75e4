"""Exactly-once effects: a handler's writes commit in one transaction with its dedupe record.

Senders deliver at least once; with PostgreSQL as the dedupe store, a handler wrapped in
``store.transactional`` gets a connection inside the transaction that also marks its webhook
id done. Its rows and the done mark commit together or not at all: a handler that raises
leaves nothing (the sender's retry runs it again), and one that committed never runs again,
even if the process dies before answering.

    export WEBHOOK_SECRET=whsec_... DATABASE_URL=postgresql://hooks@db.internal/hooks
    mtls-hooks serve examples.receiver_pg_effects:app \\
        --cert certs/server.pem --key certs/server-key.pem --client-ca certs/ca.pem \\
        --pin "$(certs-tool pin certs/client.pem)"
"""

import os
from typing import Any

import psycopg
from psycopg import sql
from quart import Quart

from mtls_hooks import PostgresDedupeStore, WebhookEvent, WebhookReceiver

NAMESPACE = os.environ.get("HOOKS_NAMESPACE", "mtls_hooks")
LEDGER = sql.Identifier(f"{NAMESPACE}_ledger")

store = PostgresDedupeStore(os.environ["DATABASE_URL"], namespace=NAMESPACE)
store.check()  # an unreachable database is a one-line error now, not at the first webhook
app = Quart(__name__)
hooks = WebhookReceiver(app, path="/webhooks", keys=[os.environ["WEBHOOK_SECRET"]], store=store)


@app.before_serving
async def create_ledger() -> None:
    async with await psycopg.AsyncConnection.connect(os.environ["DATABASE_URL"]) as conn:
        await conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (webhook_id text PRIMARY KEY, amount bigint)"
            ).format(LEDGER)
        )
        await conn.commit()


app.after_serving(store.aclose)  # the store was given to the receiver: we close it


@hooks.on("invoice.paid")
@store.transactional
async def invoice_paid(event: WebhookEvent, conn: psycopg.AsyncConnection[Any]) -> None:
    amount = int(event.payload["data"]["amount"])
    insert = sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(LEDGER)
    await conn.execute(insert, (event.id, amount))
    if amount < 0:
        # Raising rolls back the ledger row and the done mark together: the sender gets a
        # 500 and its retry runs this handler again.
        raise ValueError(f"invoice {event.id} has a negative amount")
    print(f"booked {amount} for {event.id}", flush=True)
