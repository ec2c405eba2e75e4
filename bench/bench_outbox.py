"""Outbox throughput: enqueue against a bare INSERT, a worker against ``send_many``, 2 workers
against 1 on PostgreSQL. Every ratio's baseline is measured in the same run.

* ``enqueue/<store>``: ``Outbox.enqueue`` (endpoint lookup, envelope and JSON, id, one
  durable commit, the wake-up) against a loop of bare ``INSERT`` statements of the same row
  into the same table over one plain connection, each its own transaction, building each
  row as any application must (an id, the JSON, the time): SQLite with
  ``synchronous=FULL`` (the default) and ``NORMAL``, and PostgreSQL.
* ``deliver@N``: one :class:`DeliveryWorker` (SQLite store) with N in flight, preloaded
  messages, timed once its first N deliveries are done (its connections made), against
  :meth:`AsyncWebhookSender.send_many` at the same N after its warm-up, to nginx mTLS (nginx
  pinned to core 0, this process to core 1).
* ``pg 2 workers / 1``: ``mtls-hooks deliver`` processes on one PostgreSQL database; the
  note gives the CPU seconds of the workers, PostgreSQL and nginx (all unpinned, 2 cores).

Run: ``.venv/bin/python -m bench.bench_outbox [--messages 2000] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench._servers import SIGNING_SECRET, BenchPki, make_pki
from mtls_hooks.outbox import DeliveryWorker, Endpoint, Outbox, RetrySettings
from mtls_hooks.queue._sql import new_job_id
from mtls_hooks.sender._async import AsyncWebhookSender
from mtls_hooks.sender._base import WebhookMessage
from tests.nginx import run_nginx

#: Arguments of ``bench.run_all --quick``: a smoke run that measures nothing.
QUICK_ARGV = ["--messages", "40", "--rounds", "1"]
PG_URL = os.environ.get("MTLS_HOOKS_TEST_PG_URL", "postgresql://root@127.0.0.1:5432/test")
CONCURRENCY = 32
PAYLOAD = {"invoice": "in_1", "note": "x" * 960}  # about 1 KiB enveloped
_CLI = str(Path(sys.executable).with_name("mtls-hooks"))


def _pin_to_core(core: int) -> bool:
    try:
        os.sched_setaffinity(0, {core})
    except (AttributeError, OSError):
        return False
    return True


@contextlib.contextmanager
def _pg_schema() -> Iterator[str]:
    import psycopg

    schema = "bench_" + uuid.uuid4().hex[:10]
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_URL}?options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _endpoint(pki: BenchPki, url: str, keys: Path) -> Endpoint:
    return Endpoint(
        name="bench",
        url=url,
        ca_file=pki.ca,
        cert_file=pki.client_cert,
        key_file=pki.client_key,
        signing_keys=(f"file:{keys}",),
        retry=RetrySettings(max_attempts=3, initial_wait_s=0.1),
    )


# -- enqueue -------------------------------------------------------------------------


def _row() -> tuple[Any, ...]:
    # What any application inserting this event does per row: an id, the JSON, the time.
    now = time.time()
    body = json.dumps(PAYLOAD, separators=(",", ":")).encode()
    return (new_job_id(), "outbox", "bench", body, '{"event_type":"invoice.paid"}', now, now, now)


_BARE = (
    "INSERT INTO mtls_hooks_jobs (id, queue, target, payload, meta, state, attempts, tries, "
    "run_at, created_at, updated_at) VALUES ({p}, {p}, {p}, {p}, {p}, 'pending', 0, 0, "
    "{p}, {p}, {p})"
)


def _bare_sqlite(path: Path, synchronous: str, n: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)  # autocommit: a commit per row
    conn.execute(f"PRAGMA synchronous={synchronous}")
    sql = _BARE.format(p="?")
    started = time.perf_counter()
    for _ in range(n):
        conn.execute(sql, _row())
    elapsed = time.perf_counter() - started
    conn.close()
    return n / elapsed


def _bare_pg(url: str, n: int) -> float:
    import psycopg

    sql = _BARE.format(p="%s")
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        for _ in range(n):
            conn.execute(sql, _row())
        return n / (time.perf_counter() - started)


def _ours(outbox: Outbox, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        outbox.enqueue("bench", PAYLOAD, event_type="invoice.paid")
    return n / (time.perf_counter() - started)


def enqueue_ratios(pki: BenchPki, tmp: Path, n: int, rounds: int) -> dict[str, list[float]]:
    """Per chunk: ours / bare for each store, in short alternating chunks.

    The machine's load drifts over seconds; chunks of ``n // 5`` enqueues, bare and ours
    in turn, put each ratio's two sides next to each other in time.
    """
    ratios: dict[str, list[float]] = {}
    keys = tmp / "keys.txt"
    chunk = max(1, n // 5)
    chunks = rounds * 5

    def alternate(name: str, bare: Callable[[], float], outbox: Outbox) -> None:
        outbox.add_endpoint(_endpoint(pki, "https://localhost:1/", keys))
        outbox.enqueue("bench", PAYLOAD, event_type="warm")
        pairs = [(_ours(outbox, chunk), bare()) for _ in range(chunks)]
        ratios[name] = [o / b for o, b in pairs]
        ratios[name + ":rates"] = [statistics.median(o for o, _ in pairs),
                                   statistics.median(b for _, b in pairs)]  # fmt: skip

    for mode in ("full", "normal"):
        path = tmp / f"enqueue-{mode}.sqlite3"
        bare = functools.partial(_bare_sqlite, path, mode, chunk)
        with Outbox(f"sqlite:///{path}?synchronous={mode}") as outbox:
            alternate(f"sqlite-{mode}", bare, outbox)
    with _pg_schema() as url, Outbox(url) as outbox:
        alternate("postgresql", lambda: _bare_pg(url, chunk), outbox)
    return ratios


# -- one worker against send_many ----------------------------------------------------


async def _send_many(pki: BenchPki, url: str, n: int) -> float:
    async with AsyncWebhookSender(
        signing_keys=SIGNING_SECRET,
        ca_file=pki.ca,
        certfile=pki.client_cert,
        keyfile=pki.client_key,
        max_connections=CONCURRENCY,
    ) as sender:
        body = json.dumps(PAYLOAD).encode()
        await sender.send_many([WebhookMessage(url, b"w") for _ in range(CONCURRENCY)])
        started = time.perf_counter()
        results = await sender.send_many(
            [WebhookMessage(url, body) for _ in range(n)], concurrency=CONCURRENCY
        )
        elapsed = time.perf_counter() - started
    assert all(r.ok for r in results)
    return n / elapsed


def _worker_rate(pki: BenchPki, url: str, keys: Path, store_url: str, n: int) -> float:
    """Deliveries/s once warm: timed from the first ``CONCURRENCY`` deliveries (the sender's
    TLS context and its connections made, as ``send_many``'s warm-up makes them)."""
    with Outbox(store_url) as outbox:
        outbox.add_endpoint(_endpoint(pki, url, keys))
        for _ in range(n + CONCURRENCY):
            outbox.enqueue("bench", PAYLOAD, event_type="invoice.paid")
        worker = DeliveryWorker(outbox.store, concurrency=CONCURRENCY, poll_interval_s=0.05)

        async def timed() -> float:
            run = asyncio.create_task(worker.run(until_idle=True))
            # The worker has no event for "N delivered": sample its counter every ms.
            while worker.counts.delivered < CONCURRENCY and not run.done():  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            started, before = time.perf_counter(), worker.counts.delivered
            counts = await run
            assert counts.delivered == n + CONCURRENCY, counts
            return (counts.delivered - before) / (time.perf_counter() - started)

        return asyncio.run(timed())


# -- 2 worker processes against 1 on PostgreSQL --------------------------------------


def _cpu_s(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def _pids(name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
    return found


def _processes_rate(
    pki: BenchPki, url: str, keys: Path, workers: int, n: int
) -> tuple[float, dict[str, float]]:
    with _pg_schema() as store_url, Outbox(store_url) as outbox:
        outbox.add_endpoint(_endpoint(pki, url, keys), enabled=False)
        for _ in range(n):
            outbox.enqueue("bench", PAYLOAD, event_type="invoice.paid")
        argv = [_CLI, "deliver", "--store", store_url, "--concurrency", str(CONCURRENCY)]
        procs = [
            subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            for _ in range(workers)
        ]
        try:
            for proc in procs:
                assert proc.stdout is not None
                proc.stdout.readline()  # "mtls-hooks deliver: worker ... on ..."
            others = {"postgres": _pids("postgres"), "nginx": _pids("nginx")}
            before = {k: _cpu_s(v) for k, v in others.items()}
            workers_before = _cpu_s([p.pid for p in procs])
            started = time.perf_counter()
            outbox.enable("bench")  # NOTIFY wakes every worker at once
            deadline = started + 300
            while outbox.status().by_state["done"] < n and time.perf_counter() < deadline:
                time.sleep(0.02)
            elapsed = time.perf_counter() - started
            cpu = {k: _cpu_s(v) - before[k] for k, v in others.items()}
            cpu["workers"] = _cpu_s([p.pid for p in procs]) - workers_before
        finally:
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
            for proc in procs:
                proc.wait(30)
                if proc.stdout is not None:
                    proc.stdout.close()
        assert outbox.status().by_state["done"] == n
    cpu["wall"] = elapsed
    return n / elapsed, cpu


@contextlib.contextmanager
def _nginx(workdir: Path, pki: BenchPki, *, pinned: bool) -> Iterator[str]:
    with run_nginx(
        workdir / "nginx",
        cert=Path(pki.server_cert),
        key=Path(pki.server_key),
        client_ca=Path(pki.ca),
        worker_cpu=0 if pinned else None,
    ) as nginx:
        yield nginx.url + "/hook"


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    """Measure and print the table; return its rows for ``bench/run_all.py``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    n, rounds = args.messages, args.rounds
    rows: list[dict[str, object]] = []

    def ratio_row(case: str, values: list[float], target: float, note: str) -> None:
        ratio = statistics.median(values)
        rows.append({"bench": "outbox", "case": case, "value": round(ratio, 2), "unit": "ratio",
                     "target": f">= {target:g}", "ok": ratio >= target, "note": note})  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="bench-outbox-") as tmp_name:
        tmp = Path(tmp_name)
        pki = make_pki(tmp / "pki")
        keys = tmp / "keys.txt"
        keys.write_text(SIGNING_SECRET + "\n")
        enqueue = enqueue_ratios(pki, tmp, n, rounds)
        for store in ("sqlite-full", "sqlite-normal", "postgresql"):
            ours, bare = enqueue[store + ":rates"]
            note = f"{ours:.0f} vs {bare:.0f} enqueues/s; median of {rounds * 5} chunks"
            ratio_row(f"enqueue/{store} / bare INSERT", enqueue[store], 0.7, note)
        before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        pinned = (os.cpu_count() or 1) > 1 and _pin_to_core(1)
        worker_rates: list[float] = []
        baseline_rates: list[float] = []
        with _nginx(tmp, pki, pinned=pinned) as url:
            for rnd in range(rounds):
                baseline_rates.append(asyncio.run(_send_many(pki, url, n)))
                store_url = f"sqlite:///{tmp / f'deliver-{rnd}.sqlite3'}?synchronous=normal"
                worker_rates.append(_worker_rate(pki, url, keys, store_url, n))
        if before is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, before)
        note = (f"{statistics.median(worker_rates):.0f} vs "
                f"{statistics.median(baseline_rates):.0f} deliveries/s, SQLite store, "
                f"{'nginx core 0 / this process core 1' if pinned else 'unpinned'}")  # fmt: skip
        per_round = [w / b for w, b in zip(worker_rates, baseline_rates, strict=True)]
        ratio_row(f"deliver@{CONCURRENCY} / send_many@{CONCURRENCY}", per_round, 0.8, note)
        scale: list[float] = []
        splits: list[dict[str, float]] = []
        with _nginx(tmp, pki, pinned=False) as url:
            for _ in range(rounds):
                one, _ = _processes_rate(pki, url, keys, 1, n * 2)
                two, cpu = _processes_rate(pki, url, keys, 2, n * 2)
                scale.append(two / one)
                splits.append(cpu)
                rows_note = f"{two:.0f} vs {one:.0f} deliveries/s"
        split = {k: statistics.median(s[k] for s in splits) for k in splits[0]}
        note = (f"{rows_note}; CPU over {split['wall']:.1f} s with 2 workers: workers "
                f"{split['workers']:.1f} s, postgres {split['postgres']:.1f} s, nginx "
                f"{split['nginx']:.1f} s (2 cores, unpinned)")  # fmt: skip
        ratio_row("pg 2 workers / 1", scale, 1.4, note)
    for row in rows:
        verdict = f"target {row['target']}: {'ok' if row['ok'] else 'MISSED'}; "
        print(f"{row['case']:<40} {row['value']:>6} {verdict}{row['note']}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
