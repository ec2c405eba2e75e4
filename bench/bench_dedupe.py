"""The receiver on each dedupe store, end to end: keep-alive mTLS req/s against the memory store.

Scenarios (the serving benchmark's machinery, :mod:`bench._serving_measure`): our server
with :class:`~mtls_hooks.receiver._receiver.WebhookReceiver` (pin rule, HMAC, timestamp,
handler dispatch), every request signed with a unique ``webhook-id`` so each one claims and
completes an id, on

* ``memory``: :class:`~mtls_hooks.stores._replay.MemoryDedupeStore` (the baseline);
* ``sqlite``: :class:`~mtls_hooks.stores._replay.SQLiteDedupeStore`, a fresh file;
* ``postgresql``: :class:`~mtls_hooks.stores._postgres.PostgresDedupeStore` on the local
  server (``MTLS_HOOKS_TEST_PG_URL``), fresh tables;
* ``redis``: :class:`~mtls_hooks.stores._redis.RedisDedupeStore` (``MTLS_HOOKS_TEST_REDIS_URL``).

The server runs on core 0, the generator on core 1; PostgreSQL and Redis run wherever the
kernel puts them, as they would beside a real receiver. Scenarios are interleaved and each
ratio is the median of its per-round ratios. Stores that are not reachable are left out.

Run: ``.venv/bin/python -m bench.bench_dedupe [--rounds N] [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import socket
import statistics
import sys
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from bench._servers import BenchPki, _receiver_app, receiver_app_memory, receiver_app_sqlite
from bench._serving_measure import SATURATE, Samples, Settings, measure, verification_scenario

if TYPE_CHECKING:
    from quart import Quart

__all__ = ["QUICK_ARGV", "main"]

Row = dict[str, object]
PG_URL = os.environ.get("MTLS_HOOKS_TEST_PG_URL", "postgresql://root@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("MTLS_HOOKS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


# One namespace per run, set by main() and inherited by the server processes, so that the
# parent drops exactly what its servers created.
_NAMESPACE_ENV = "BENCH_DEDUPE_NAMESPACE"


def _namespace(pki: BenchPki) -> str:
    return os.environ.get(_NAMESPACE_ENV, f"bench_dedupe_{os.getpid()}")


def receiver_app_postgres(pki: BenchPki) -> Quart:
    """Full verification with the PostgreSQL dedupe store."""
    from mtls_hooks.stores._postgres import PostgresDedupeStore

    store = PostgresDedupeStore(PG_URL, namespace=_namespace(pki))
    store.check()
    return _receiver_app(pki, store)


def receiver_app_redis(pki: BenchPki) -> Quart:
    """Full verification with the Redis dedupe store."""
    from mtls_hooks.stores._redis import RedisDedupeStore

    store = RedisDedupeStore(REDIS_URL, namespace=_namespace(pki))
    store.check()
    return _receiver_app(pki, store)


_FACTORIES = {
    "memory": receiver_app_memory,
    "sqlite": receiver_app_sqlite,
    "postgresql": receiver_app_postgres,
    "redis": receiver_app_redis,
}
# (top, target): each against the memory store.
_TARGETS: dict[str, float | None] = {"sqlite": 0.9, "postgresql": 0.7, "redis": None}


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), 2).close()
    except OSError:
        return False
    return True


def _drop(namespace: str) -> None:
    with contextlib.suppress(Exception):
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True) as conn:
            for table in ("dedupe", "rate"):
                conn.execute(f'DROP TABLE IF EXISTS "{namespace}_{table}"')
    with contextlib.suppress(Exception):
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        client.close()


def _rows(samples: Samples, stores: list[str]) -> list[Row]:
    rows: list[Row] = []
    for store in stores:
        results = samples.get((store, SATURATE), [])
        if not results:
            continue
        rate = statistics.median(r.rate for r in results)
        p50 = statistics.median(r.p50_ms for r in results)
        rows.append(
            {
                "bench": "dedupe",
                "case": f"{store}: keep-alive req/s",
                "value": round(rate),
                "unit": "req/s",
                "note": f"p50 {p50:.2f} ms",
            }
        )
    base = samples.get(("memory", SATURATE), [])
    for store, target in _TARGETS.items():
        tops = samples.get((store, SATURATE), [])
        if not tops or not base:
            continue
        pairs = list(zip(tops, base, strict=False))
        ratios = [a.rate / b.rate for a, b in pairs]
        value = round(statistics.median(ratios), 2)
        row: Row = {
            "bench": "dedupe",
            "case": f"{store} / memory, keep-alive req/s",
            "value": value,
            "unit": "ratio",
            "note": "per-round ratios: " + ", ".join(f"{r:.2f}" for r in ratios),
        }
        if target is not None:
            row["target"] = f">= {target}"
            row["ok"] = value >= target
        rows.append(row)
        # Requests per second of our server's CPU: robust to a time-shared core (the store
        # server's own CPU is not in it: that is what the req/s ratio above includes).
        costs = [
            b.server_us_per_request / a.server_us_per_request
            for a, b in pairs
            if a.server_us_per_request and b.server_us_per_request
        ]
        if costs:
            rows.append(
                {
                    "bench": "dedupe",
                    "case": f"{store} / memory, req per receiver CPU-s",
                    "value": round(statistics.median(costs), 2),
                    "unit": "ratio",
                    "note": "per-round: " + ", ".join(f"{r:.2f}" for r in costs),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> list[Row]:
    """Measure, print the table and return its rows for ``bench/run_all.py``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run, not a measurement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=None, help="keep-alive seconds")
    parser.add_argument("--verbose", action="store_true", help="print every run")
    args = parser.parse_args(argv)
    settings = (
        Settings.quick() if args.quick else dataclasses.replace(Settings(), rounds=args.rounds)
    )
    if args.duration is not None:
        settings = dataclasses.replace(settings, duration_s=args.duration)
    stores = ["memory", "sqlite"]
    stores += [s for s, url in (("postgresql", PG_URL), ("redis", REDIS_URL)) if _reachable(url)]
    scenarios = tuple(verification_scenario(_FACTORIES[s], s) for s in stores)
    progress = (lambda line: print(line, flush=True)) if args.verbose else None
    namespace = f"bench_dedupe_{os.getpid()}"
    os.environ[_NAMESPACE_ENV] = namespace
    try:
        measured = measure(settings, scenarios, progress=progress)
    finally:
        del os.environ[_NAMESPACE_ENV]
        _drop(namespace)
    rows = _rows(measured.samples, stores)
    for row in rows:
        verdict = (
            f" (target {row['target']}: {'ok' if row['ok'] else 'MISSED'})" if "ok" in row else ""
        )
        print(f"{row['case']:<40} {row['value']:>8} {row['unit']}{verdict}  {row.get('note', '')}")
    return rows


QUICK_ARGV = ["--quick"]

if __name__ == "__main__":
    main(sys.argv[1:])
