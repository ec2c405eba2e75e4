"""Sender throughput against nginx mTLS on 127.0.0.1: our layer against the raw libraries.

In one run, with the same nginx (one worker pinned to core 0) and this process pinned to core 1,
each case sends signed 1 KiB JSON deliveries and reports deliveries/s:

* ``naive``: a new ``httpx.Client`` (new context, new handshake) per delivery;
* ``sync``: our :class:`WebhookSender`, pooled;
* ``async@N``: our :class:`AsyncWebhookSender` with N in flight (``send_many``);
* ``aiohttp@N``: raw aiohttp at the same concurrency, headers signed once: the ceiling;
* ``httpx-async@N``: raw ``httpx.AsyncClient`` (a quarter of the deliveries: it is slow),
  the evidence for choosing aiohttp.

Cases run interleaved for ``rounds`` rounds; the median of each is reported, and each ratio is
the median of its per-round ratios (neighbours in time share the machine's load). Pooled cases
warm their connections first (not timed): the steady state is what a busy sender sees. The
note gives the client's CPU per delivery (setup included), the figure to trust on a busy box.

Run: ``.venv/bin/python -m bench.bench_sender [--deliveries 2000] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from bench._servers import SIGNING_SECRET, BenchPki, make_pki
from mtls_hooks.core._signing import Signer, parse_key
from mtls_hooks.core._tls import create_client_context
from mtls_hooks.sender._async import AsyncWebhookSender
from mtls_hooks.sender._base import WebhookMessage
from mtls_hooks.sender._retry import RetryPolicy
from mtls_hooks.sender._sync import WebhookSender
from tests.nginx import run_nginx

#: Arguments of ``bench.run_all --quick``: a smoke run that measures nothing.
QUICK_ARGV = ["--deliveries", "30", "--rounds", "1"]
CONCURRENCY = (8, 32, 64)
# A 1 KiB JSON document, the size the issue measures.
PAYLOAD = {"type": "invoice.paid", "data": {"id": "inv_1", "note": "x" * 980}}


def _pin_to_core(core: int) -> bool:
    try:
        os.sched_setaffinity(0, {core})
    except (AttributeError, OSError):
        return False
    return True


def _body() -> bytes:
    return json.dumps(PAYLOAD, separators=(",", ":")).encode("utf-8")


class Cases:
    """Each case returns deliveries/s for ``n`` deliveries to ``url``."""

    def __init__(self, pki: BenchPki, url: str, n: int) -> None:
        self.pki, self.url, self.n = pki, url, n
        self.body = _body()
        self.signer = Signer([parse_key(SIGNING_SECRET)])  # type: ignore[list-item]
        self.tls = {"ca_file": pki.ca, "certfile": pki.client_cert, "keyfile": pki.client_key}

    def _context(self) -> ssl.SSLContext:
        return create_client_context(
            ca_file=self.pki.ca, certfile=self.pki.client_cert, keyfile=self.pki.client_key
        )

    def _sender_kwargs(self) -> dict[str, Any]:
        return {"signing_keys": SIGNING_SECRET, **self.tls, "retry": RetryPolicy.interactive()}

    def _headers(self) -> dict[str, str]:
        signed = self.signer.sign(self.body, webhook_id=Signer.new_webhook_id())
        return {"content-type": "application/json", **signed.as_dict()}

    def naive(self) -> float:
        # What naive code does: a client (and an SSL context, and a handshake) per delivery.
        started = time.perf_counter()
        for _ in range(self.n):
            with httpx.Client(verify=self._context()) as client:
                client.post(self.url, content=self.body, headers=self._headers()).raise_for_status()
        return self.n / (time.perf_counter() - started)

    def sync(self) -> float:
        with WebhookSender(**self._sender_kwargs(), max_connections=1) as sender:
            sender.send(self.url, b"warm-up")
            started = time.perf_counter()
            for _ in range(self.n):
                sender.send(self.url, self.body)
            return self.n / (time.perf_counter() - started)

    async def ours_async(self, concurrency: int) -> float:
        async with AsyncWebhookSender(
            **self._sender_kwargs(), max_connections=concurrency
        ) as sender:
            warm = [WebhookMessage(self.url, b"w") for _ in range(concurrency)]
            await sender.send_many(warm)
            messages = [WebhookMessage(self.url, self.body) for _ in range(self.n)]
            started = time.perf_counter()
            results = await sender.send_many(messages, concurrency=concurrency)
            elapsed = time.perf_counter() - started
        assert all(r.ok for r in results)
        return self.n / elapsed

    def layer_cpu_us(self) -> float:
        """CPU of our layer alone per delivery (serialise, id, sign, classify, record): no I/O.

        The figure that does not move with the machine's load: compare it with a raw
        aiohttp request's CPU to see what the layer costs.
        """
        with WebhookSender(**self._sender_kwargs()) as sender:
            rounds = 20_000
            started = time.process_time()
            for _ in range(rounds):
                delivery = sender._start(self.url, self.body, None, None)
                sender._sign(delivery)
                sender._timeout_s(delivery)
                sender._answer(delivery, 200, {}, b"", 0.0)
                sender._result(delivery)
            return (time.process_time() - started) / rounds * 1e6

    async def _fan_out(
        self, concurrency: int, post: Callable[[dict[str, str]], Awaitable[None]], n: int
    ) -> float:
        headers = self._headers()  # signed once: the raw library without our layer
        await asyncio.gather(*(post(headers) for _ in range(concurrency)))
        pending = iter(range(n))

        async def worker() -> None:
            for _ in pending:
                await post(headers)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return n / (time.perf_counter() - started)

    async def raw_aiohttp(self, concurrency: int) -> float:
        connector = aiohttp.TCPConnector(ssl=self._context(), limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def post(headers: dict[str, str]) -> None:
                async with session.post(self.url, data=self.body, headers=headers) as answer:
                    await answer.read()
                    assert answer.status == 200

            return await self._fan_out(concurrency, post, self.n)

    async def raw_httpx_async(self, concurrency: int) -> float:
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(verify=self._context(), limits=limits) as client:

            async def post(headers: dict[str, str]) -> None:
                answer = await client.post(self.url, content=self.body, headers=headers)
                assert answer.status_code == 200

            # A quarter of the deliveries: at ~100-400/s the full count would dominate the run.
            return await self._fan_out(concurrency, post, max(1, self.n // 4))


@contextlib.contextmanager
def _nginx(workdir: Path, pki: BenchPki) -> Iterator[str]:
    with run_nginx(
        workdir / "nginx",
        cert=Path(pki.server_cert),
        key=Path(pki.server_key),
        client_ca=Path(pki.ca),
        worker_cpu=0 if (os.cpu_count() or 1) > 1 else None,
    ) as nginx:
        yield nginx.url + "/hook"


@dataclass(frozen=True)
class Sample:
    """One run of one case."""

    rate: float  # deliveries/s
    cpu_us: float  # this process's CPU per delivery, setup included


def measure(deliveries: int = 2000, rounds: int = 3) -> tuple[dict[str, list[Sample]], float]:
    """Run every case ``rounds`` times, interleaved.

    Returns:
        Every sample by case, and the CPU of our layer alone per delivery (µs).
    """
    samples: dict[str, list[Sample]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sender-") as tmp:
        pki = make_pki(Path(tmp))
        with _nginx(Path(tmp), pki) as url:
            cases = Cases(pki, url, deliveries)
            plan: list[tuple[str, Callable[[], float], int]] = [
                ("naive", cases.naive, deliveries),
                ("sync", cases.sync, deliveries),
            ]
            for c in CONCURRENCY:
                plan += [
                    (f"async@{c}", functools.partial(_run, cases.ours_async, c), deliveries),
                    (f"aiohttp@{c}", functools.partial(_run, cases.raw_aiohttp, c), deliveries),
                    (
                        f"httpx-async@{c}",
                        functools.partial(_run, cases.raw_httpx_async, c),
                        max(1, deliveries // 4),
                    ),
                ]
            for _ in range(rounds):
                for name, case, count in plan:
                    cpu_started = time.process_time()
                    rate = case()
                    cpu_us = (time.process_time() - cpu_started) / count * 1e6
                    samples.setdefault(name, []).append(Sample(rate, cpu_us))
            layer_us = cases.layer_cpu_us()
    return samples, layer_us


def _run(case: Callable[[int], Coroutine[Any, Any, float]], concurrency: int) -> float:
    return asyncio.run(case(concurrency))


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    """Measure and print the table; return its rows for ``bench/run_all.py``.

    Each row: ``bench``, ``case``, ``value`` (deliveries/s), ``unit``, ``note``; then the
    ratio rows with ``target`` and ``ok``.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    pinned = (os.cpu_count() or 1) > 1 and _pin_to_core(1)
    samples, layer_us = measure(args.deliveries, args.rounds)
    where = "nginx core 0 / client core 1" if pinned else "unpinned"
    rows: list[dict[str, object]] = [
        {
            "bench": "sender",
            "case": name,
            "value": round(statistics.median(s.rate for s in runs)),
            "unit": "deliveries/s",
            "note": f"client CPU {statistics.median(s.cpu_us for s in runs):.0f} us/delivery; "
            f"median of {args.rounds}, {where}",
        }
        for name, runs in samples.items()
    ]
    ratios = [
        ("sync / naive", "sync", "naive", 5.0),
        ("async@32 / sync", "async@32", "sync", 2.0),
        ("async@32 / aiohttp@32", "async@32", "aiohttp@32", 0.8),
        ("async@64 / async@8", "async@64", "async@8", 1.0),
    ]
    rows.append(
        {
            "bench": "sender",
            "case": "our layer, no I/O",
            "value": round(layer_us, 1),
            "unit": "us CPU/delivery",
            "note": "serialise, id, sign (HMAC), classify, record; compare with aiohttp@N CPU",
        }
    )
    for name, top, bottom, target in ratios:
        ratio = statistics.median(
            t.rate / b.rate for t, b in zip(samples[top], samples[bottom], strict=True)
        )
        rows.append(
            {
                "bench": "sender",
                "case": name,
                "value": round(ratio, 2),
                "unit": "ratio",
                "target": f">= {target:g}",
                "ok": ratio >= target,
                "note": "median of per-round ratios",
            }
        )
    width = max(len(str(r["case"])) for r in rows)
    for row in rows:
        verdict = (
            f"target {row['target']}: {'ok' if row['ok'] else 'MISSED'}; " if "ok" in row else ""
        )
        print(f"{row['case']:<{width}}  {row['value']:>8} {row['unit']:<13} {verdict}{row['note']}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
