"""Durable delivery: commit webhooks to the outbox, then let a worker deliver them.

``enqueue`` returns once the message is committed (here to SQLite; PostgreSQL works the same
with a ``postgresql://`` URL): a crash after that loses nothing. A worker, in this process
here (``mtls-hooks deliver`` in production), delivers each message with the same signing and
pinning as ``send``, retrying on schedule or dead-lettering it::

    WEBHOOK_SECRET=whsec_... python -m examples.outbox_send https://localhost:8443/webhooks \\
        --cert certs/client.pem --key certs/client-key.pem --ca certs/ca.pem
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

from mtls_hooks import DeliveryWorker, Outbox, OutboxEndpoint


def main(argv: Sequence[str] | None = None) -> int:
    """Enqueue three invoices for one endpoint, deliver them, show each one's fate."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("url")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--store", default="sqlite:///outbox.sqlite3")
    args = parser.parse_args(argv)

    with Outbox(args.store) as outbox:
        # An endpoint is a record: files and variable names, never the key material itself.
        outbox.add_endpoint(
            OutboxEndpoint(
                name="billing",
                url=args.url,
                ca_file=args.ca,
                cert_file=args.cert,
                key_file=args.key,
                signing_keys=("env:WEBHOOK_SECRET",),
            )
        )
        ids = [
            outbox.enqueue(
                "billing",
                {"invoice": f"in_{n}", "amount": 4200 + n},
                event_type="invoice.paid",
                idempotency_key=f"invoice-in_{n}",  # enqueued twice, delivered once
            )
            for n in range(3)
        ]
        counts = asyncio.run(DeliveryWorker(outbox.store).run(until_idle=True))
        for message_id in ids:
            message, attempts = outbox.show(message_id)
            print(f"{message_id} {message.state.value} after {len(attempts)} attempt(s)")
    print(f"{counts.delivered} delivered, {counts.failed} failed")
    return 0 if counts.failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
