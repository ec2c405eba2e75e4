"""Fan out many signed webhooks from asyncio, with a bound on how many are in flight.

    WEBHOOK_SECRET=whsec_... python -m examples.send_async_fanout \\
        https://localhost:8443/webhooks --cert client.pem --key client-key.pem --ca ca.pem \\
        --count 500 --concurrency 16

Exit status 0 when every event was acknowledged, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from mtls_hooks import AsyncWebhookSender, RetryPolicy, WebhookMessage


async def fan_out(args: argparse.Namespace) -> int:
    messages = [
        WebhookMessage(args.url, {"invoice": f"in_{n}", "amount": 100 + n}, "invoice.paid")
        for n in range(args.count)
    ]
    async with AsyncWebhookSender(
        signing_keys=os.environ[args.secret_env],
        certfile=args.cert,
        keyfile=args.key,
        ca_file=args.ca,
        pins=args.pin,
        retry=RetryPolicy.interactive(),
        max_connections=args.concurrency,  # one keep-alive connection per worker
    ) as sender:
        started = time.perf_counter()
        results = await sender.send_many(messages, concurrency=args.concurrency)
        elapsed_s = time.perf_counter() - started
    failed = [result for result in results if not result.ok]
    for result in failed[:5]:
        print(f"failed {result.webhook_id}: {result.error}")
    print(
        f"{len(results) - len(failed)} delivered, {len(failed)} failed in {elapsed_s:.2f} s: "
        f"{len(results) / elapsed_s:.0f} deliveries/s with {args.concurrency} in flight"
    )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the receiver's https:// endpoint")
    parser.add_argument("--cert", required=True, help="our client certificate (PEM)")
    parser.add_argument("--key", required=True, help="its private key (PEM)")
    parser.add_argument("--ca", help="CA bundle of the receiver's certificate")
    parser.add_argument("--pin", action="append", default=[], help="receiver SPKI pin")
    parser.add_argument("--secret-env", default="WEBHOOK_SECRET", help="variable with whsec_")
    parser.add_argument("--count", type=int, default=200, help="events to send")
    parser.add_argument("--concurrency", type=int, default=16, help="deliveries in flight")
    return asyncio.run(fan_out(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
