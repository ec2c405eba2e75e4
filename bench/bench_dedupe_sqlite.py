"""The receiver on the SQLite dedupe store: against the memory store, and 2 workers against 1.

Every server is our server with :class:`~mtls_hooks.receiver._receiver.WebhookReceiver` (pin
rule, HMAC, timestamp, handler dispatch), and every request is a signed 1 KiB POST with a
fresh ``webhook-id``, so each one claims and completes an id. Scenarios:

* ``bare``: a bare Quart app on stock Hypercorn, for the issue 14 row (receiver ÷ bare);
* ``memory`` and ``sqlite``: one worker pinned to the first core, the generator on the other;
* ``sqlite w1`` and ``sqlite w2``: ``workers=1`` and ``workers=2`` on one SQLite file, nothing
  pinned: the two cores are shared by the workers and the generator, as in issue 14.

Scenarios run interleaved (the order rotates every round) and each ratio is the median of its
per-round ratios. Next to req/s each row gives the server's CPU per request, read from
``/proc`` for the server process and its workers: on a machine shared with other work the
rates swing, the CPU a request costs much less.

Run: ``.venv/bin/python -m bench.bench_dedupe_sqlite [--rounds N] [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._servers import (
    SIGNING_SECRET,
    BenchPki,
    _receiver_app,
    bare_app,
    make_pki,
    run_server,
    serving_process,
)
from bench.loadgen import KEEP_ALIVE, LoadResult, LoadSpec, mp_context, run_load

__all__ = ["QUICK_ARGV", "main"]

QUICK_ARGV = ["--quick"]
Row = dict[str, object]

# The app of the worker processes is built from these (spawned workers import this module).
_PKI_ENV = "BENCH_DEDUPE_SQLITE_PKI"
_STORE_ENV = "BENCH_DEDUPE_SQLITE_STORE"  # "memory", or the SQLite file
_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 10.0


def __getattr__(name: str) -> Any:
    """``app``: the receiver the environment describes (``serve()`` imports it by name)."""
    if name != "app":
        raise AttributeError(name)
    import json

    from mtls_hooks.stores._replay import DedupeStore, MemoryDedupeStore, SQLiteDedupeStore

    pki = BenchPki(**json.loads(os.environ[_PKI_ENV]))
    where = os.environ[_STORE_ENV]
    store: DedupeStore = MemoryDedupeStore() if where == "memory" else SQLiteDedupeStore(where)
    made = _receiver_app(pki, store)
    globals()["app"] = made  # one app per process, as a module-level global would be
    return made


@dataclass(frozen=True)
class Case:
    """One server: its store, its worker count, and whether it is pinned to a core."""

    name: str
    store: str  # "memory", "sqlite", or "bare" (Quart on stock Hypercorn)
    workers: int
    pinned: bool


CASES = (
    Case("bare", "bare", 1, pinned=True),
    Case("memory", "memory", 1, pinned=True),
    Case("sqlite", "sqlite", 1, pinned=True),
    Case("sqlite w1", "sqlite", 1, pinned=False),
    Case("sqlite w2", "sqlite", 2, pinned=False),
    # The control: what a second worker costs without a shared file (each its own memory).
    Case("memory w1", "memory", 1, pinned=False),
    Case("memory w2", "memory", 2, pinned=False),
)


@dataclass(frozen=True)
class Settings:
    """Bounds of one run."""

    rounds: int = 4
    duration_s: float = 2.0
    max_requests: int = 30_000  # pre-signed in memory by the generator
    processes: int = 2
    connections: int = 16  # per generator process: 32 keep-alive connections in all
    warmup_requests: int = 5
    store_ids: int = 20_000  # per process, in the in-process store timing
    store_rounds: int = 3


_QUICK = Settings(
    rounds=1, duration_s=0.5, max_requests=200, processes=1, connections=2, store_ids=200,
    store_rounds=1,
)  # fmt: skip
_STORE_CONCURRENCY = 16  # requests in flight per process in the in-process timing


def _serve_process(pki: BenchPki, store: str, workers: int, cpu: int | None, out: Any) -> None:
    import json
    from dataclasses import asdict

    from mtls_hooks.serving._config import ServerConfig
    from mtls_hooks.serving._serving import create_sockets
    from mtls_hooks.serving._workers import serve

    if cpu is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})
    os.environ[_PKI_ENV] = json.dumps(asdict(pki))
    os.environ[_STORE_ENV] = store
    config = ServerConfig(
        certfile=pki.server_cert,
        keyfile=pki.server_key,
        client_ca=(pki.ca,),
        pins=(pki.client_pin,),
        bind=("127.0.0.1:0",),
        workers=workers,
        log_level="WARNING",
    )
    sockets = create_sockets(config)
    out.send(sockets[0].getsockname()[1])
    serve("bench.bench_dedupe_sqlite:app", config, sockets=sockets)


@contextlib.contextmanager
def _running(
    case: Case, pki: BenchPki, workdir: Path, cpu: int | None
) -> Iterator[tuple[int, int]]:
    """Yield (port, pid) of the case's server; stop it (and its workers) by PID on exit."""
    if case.store == "bare":
        with run_server("stock", bare_app, pki, cpu=cpu) as server:
            yield server.port, server.pid
        return
    store = "memory" if case.store == "memory" else str(workdir / f"{case.name}.sqlite3")
    # Not a daemon: its workers are its children.
    with serving_process(
        _serve_process, lambda out: (pki, store, case.workers, cpu, out), pki, what=case.name,
        daemon=False,
    ) as server:  # fmt: skip
        yield server.port, server.pid


def _load(port: int, pki: BenchPki, settings: Settings, cpus: tuple[int, ...] | None) -> LoadSpec:
    return LoadSpec(
        port=port,
        ca_file=pki.ca,
        cert_file=pki.client_cert,
        key_file=pki.client_key,
        mode=KEEP_ALIVE,
        processes=settings.processes,
        connections=settings.connections,
        max_requests=settings.max_requests,
        duration_s=settings.duration_s,
        warmup_requests=settings.warmup_requests,
        cpus=cpus,
        signing_secret=SIGNING_SECRET,
    )


def measure(
    settings: Settings, progress: Callable[[str], None] | None = None
) -> dict[str, list[LoadResult]]:
    """Start every case's server once, then run ``settings.rounds`` interleaved rounds."""
    allowed = sorted(os.sched_getaffinity(0))
    server_cpu = allowed[0] if len(allowed) > 1 else None
    generator_cpus = tuple(allowed[1:]) if len(allowed) > 1 else None
    results: dict[str, list[LoadResult]] = {case.name: [] for case in CASES}
    with tempfile.TemporaryDirectory(prefix="bench-dedupe-sqlite-") as tmp:
        workdir = Path(tmp)
        pki = make_pki(workdir / "pki")
        with contextlib.ExitStack() as up:
            servers = {
                case.name: up.enter_context(
                    _running(case, pki, workdir, server_cpu if case.pinned else None)
                )
                for case in CASES
            }
            for round_index in range(settings.rounds):
                shift = round_index % len(CASES)
                for case in CASES[shift:] + CASES[:shift]:
                    port, pid = servers[case.name]
                    cpus = generator_cpus if case.pinned else None
                    result = run_load(_load(port, pki, settings, cpus), observe_pid=pid)
                    results[case.name].append(result)
                    if progress is not None:
                        progress(
                            f"round {round_index + 1} {case.name}: {result.rate:.0f}/s, server "
                            f"{result.server_us_per_request or 0:.0f} us/req, statuses "
                            f"{result.statuses}, errors {result.errors}"
                        )
    return results


# --------------------------------------------------------------------------- in-process


def _store_worker(where: str, ids: int, barrier: Any, out: Any) -> None:
    """Claim and complete ``ids`` fresh ids, 16 in flight; send the CPU µs per id."""
    import asyncio
    import uuid

    from mtls_hooks.stores._replay import DedupeStore, MemoryDedupeStore, SQLiteDedupeStore

    async def run() -> float:
        store: DedupeStore = MemoryDedupeStore() if where == "memory" else SQLiteDedupeStore(where)
        keys = iter([f"default msg_{uuid.uuid4().hex}" for _ in range(ids)])

        async def requests() -> None:
            for key in keys:
                await store.claim(key)
                await asyncio.sleep(0)  # the handler: one turn
                await store.complete(key)

        await asyncio.to_thread(barrier.wait, _START_TIMEOUT_S)
        started = time.process_time()
        await asyncio.gather(*(requests() for _ in range(_STORE_CONCURRENCY)))
        spent = time.process_time() - started
        await store.aclose()
        return spent / ids * 1e6

    out.put(asyncio.run(run()))


def store_cpu_us(where: str, processes: int, ids: int) -> float:
    """CPU µs per claim+complete in ``processes`` processes on one store (median of them)."""
    ctx = mp_context()
    barrier = ctx.Barrier(processes)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_store_worker, args=(where, ids, barrier, out))  # type: ignore[attr-defined]
        for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    try:
        costs: list[float] = [out.get(timeout=120) for _ in procs]
        return statistics.median(costs)
    finally:
        for proc in procs:
            proc.join(_STOP_TIMEOUT_S)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _create_store(path: str) -> None:
    """Create the store's file (WAL, schema) once, as a first start of the receiver would.

    Two processes opening a new file at the same instant can fail with "database is locked"
    (SQLite's switch to WAL does not wait for the other's lock); the timing is not what this
    measures.
    """
    from mtls_hooks.stores._replay import SQLiteDedupeStore

    SQLiteDedupeStore(path).close()


def measure_stores(settings: Settings) -> dict[str, list[float]]:
    """In-process CPU per claim+complete: memory, SQLite alone, SQLite shared by two."""
    costs: dict[str, list[float]] = {"memory": [], "sqlite": [], "sqlite x2": []}
    with tempfile.TemporaryDirectory(prefix="bench-dedupe-sqlite-store-") as tmp:
        for index in range(settings.store_rounds):
            costs["memory"].append(store_cpu_us("memory", 1, settings.store_ids))
            path = str(Path(tmp) / f"alone-{index}.sqlite3")
            costs["sqlite"].append(store_cpu_us(path, 1, settings.store_ids))
            path = str(Path(tmp) / f"shared-{index}.sqlite3")
            _create_store(path)  # the two processes open an existing file, not race to create it
            costs["sqlite x2"].append(store_cpu_us(path, 2, settings.store_ids))
    return costs


def _cpu(result: LoadResult) -> float:
    return result.server_us_per_request or float("nan")


def rows_of(results: dict[str, list[LoadResult]], stores: dict[str, list[float]]) -> list[Row]:
    """Turn the rounds into table rows: per-round ratios, then their medians."""

    def ratio(top: str, bottom: str) -> float:
        pairs = zip(results[top], results[bottom], strict=True)
        return statistics.median(a.rate / b.rate for a, b in pairs if b.rate)

    def rate(name: str) -> float:
        return statistics.median(r.rate for r in results[name])

    def cpu(name: str) -> float:
        return statistics.median(_cpu(r) for r in results[name])

    def row(case: str, value: float, unit: str, target: float | None, note: str) -> Row:
        made: Row = {"bench": "dedupe-sqlite", "case": case, "value": round(value, 2)}
        made.update(unit=unit, note=note)
        if target is not None:
            made.update(target=f">= {target}", ok=value >= target)
        return made

    def cpus(*names: str) -> str:
        return ", ".join(f"{n} {rate(n):,.0f} req/s {cpu(n):.0f} us CPU/req" for n in names)

    store = {name: statistics.median(values) for name, values in stores.items()}
    return [
        row("store CPU per claim+complete, in-process: sqlite", store["sqlite"], "us", None,
            f"memory {store['memory']:.1f} us; sqlite shared by 2 processes "
            f"{store['sqlite x2']:.1f} us each; {_STORE_CONCURRENCY} in flight"),
        row("sqlite / memory, keep-alive req/s (1 worker, pinned)",
            ratio("sqlite", "memory"), "x", 0.9, cpus("memory", "sqlite")),
        row("sqlite / memory, server CPU per request", cpu("sqlite") / cpu("memory"), "x", None,
            "lower is better"),
        row("receiver[sqlite] / bare Quart on stock Hypercorn, req/s",
            ratio("sqlite", "bare"), "x", 1.3, cpus("bare") + " (issue 14; lean ASGI path)"),
        row("sqlite --workers 2 / 1, keep-alive req/s (2 cores, generator included)",
            ratio("sqlite w2", "sqlite w1"), "x", 1.6, cpus("sqlite w1", "sqlite w2")),
        row("sqlite --workers 2 / 1, server CPU per request", cpu("sqlite w2") / cpu("sqlite w1"),
            "x", None, "1.00 = a second worker costs nothing"),
        row("memory --workers 2 / 1, keep-alive req/s (control: nothing shared)",
            ratio("memory w2", "memory w1"), "x", None, cpus("memory w1", "memory w2")),
        row("memory --workers 2 / 1, server CPU per request (control)",
            cpu("memory w2") / cpu("memory w1"), "x", None, "what a second worker costs anyway"),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> list[Row]:
    """Run the benchmark, print its table, and return its rows (see ``bench.run_all``)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=Settings.rounds)
    parser.add_argument("--quick", action="store_true", help="smoke run: measures nothing")
    args = parser.parse_args(argv)
    settings = _QUICK if args.quick else Settings(rounds=args.rounds)
    results = measure(settings, progress=lambda line: print(line, flush=True))
    stores = measure_stores(settings)
    print(f"store CPU us per claim+complete: {stores}", flush=True)
    rows = rows_of(results, stores)
    from bench.run_all import format_table

    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
