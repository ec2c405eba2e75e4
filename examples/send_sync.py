"""Send a few signed webhooks over mTLS and print what happened to each.

    WEBHOOK_SECRET=whsec_... python -m examples.send_sync https://localhost:8443/webhooks \\
        --cert client.pem --key client-key.pem --ca ca.pem

Exit status 0 when every event was acknowledged, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os

from tenacity import stop_after_attempt

from mtls_hooks import DeliveryError, RetryPolicy, WebhookSender

EVENTS = [
    ("customer.created", {"customer": "cus_1", "email": "ada@example.org"}),
    ("invoice.paid", {"invoice": "in_1", "customer": "cus_1", "amount": 4200}),
    ("invoice.paid", {"invoice": "in_2", "customer": "cus_1", "amount": 1300}),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the receiver's https:// endpoint")
    parser.add_argument("--cert", required=True, help="our client certificate (PEM)")
    parser.add_argument("--key", required=True, help="its private key (PEM)")
    parser.add_argument("--ca", help="CA bundle of the receiver's certificate")
    parser.add_argument("--pin", action="append", default=[], help="receiver SPKI pin")
    parser.add_argument("--secret-env", default="WEBHOOK_SECRET", help="variable with whsec_")
    parser.add_argument("--max-attempts", type=int, default=3, help="tries per event")
    args = parser.parse_args(argv)

    # Short waits for a person at a terminal; a service keeps the far-reaching default.
    retry = RetryPolicy.interactive().replace(stop=stop_after_attempt(args.max_attempts))
    failed = 0
    with WebhookSender(
        signing_keys=os.environ[args.secret_env],
        certfile=args.cert,
        keyfile=args.key,
        ca_file=args.ca,
        pins=args.pin,
        retry=retry,
    ) as sender:
        for event_type, data in EVENTS:
            try:
                result = sender.send(args.url, data, event_type=event_type)
            except DeliveryError as exc:
                failed += 1
                print(f"{event_type:<16} failed: {exc}", flush=True)
            else:
                print(f"{event_type:<16} {result.webhook_id} {result.attempts[-1]}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
