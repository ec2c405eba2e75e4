"""How the serving benchmark measures: scenarios, bounds, servers up, interleaved rounds.

``bench/bench_serving.py`` describes the scenarios and turns these measurements into rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bench._asgi_cost import asgi_us_per_request
from bench._servers import (
    SIGNING_SECRET,
    AppFactory,
    BenchPki,
    bare_app,
    make_pki,
    receiver_app_memory,
    receiver_app_memory_quart,
    receiver_app_sqlite,
    run_server,
)
from bench.loadgen import KEEP_ALIVE, NEW_HANDSHAKE, LoadResult, LoadSpec, Mode, run_load

__all__ = [
    "HANDSHAKES",
    "LATENCY",
    "SATURATE",
    "SCENARIOS",
    "Cores",
    "Measure",
    "Measurements",
    "Samples",
    "Scenario",
    "Settings",
    "measure",
    "verification_scenario",
]


@dataclass(frozen=True)
class Scenario:
    """One server setup under load.

    Attributes:
        name: the label in the table.
        server: ``nginx``, ``stock`` (Hypercorn as shipped) or ``ours``.
        factory: builds the Quart app in the server process (unused for nginx).
        signed: send Standard Webhooks signatures with unique ids.
        handshake: also measure new-handshake connections/s.
        loop: our server's event loop, ``asyncio`` or ``uvloop``.
    """

    name: str
    server: Literal["nginx", "stock", "ours"]
    factory: AppFactory | None = None
    signed: bool = False
    handshake: bool = True
    loop: str = "asyncio"


def verification_scenario(
    factory: AppFactory, name: str = "ours+verify", *, loop: str = "asyncio"
) -> Scenario:
    """SCENARIO HOOK for the receiver (issue 4): ``factory`` builds a webhook-receiving app.

    The app is served by our server; the generator sends signed 1 KiB JSON POSTs with a
    unique ``webhook-id`` each, signed with ``SIGNING_SECRET`` before the timed window.
    Handshake rates are not measured: the receiver adds nothing to the handshake.
    """
    return Scenario(name, "ours", factory, signed=True, handshake=False, loop=loop)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("nginx", "nginx"),
    Scenario("baseline", "stock", bare_app),
    Scenario("ours", "ours", bare_app),
    verification_scenario(receiver_app_memory),
    verification_scenario(receiver_app_memory_quart, "ours+verify[quart path]"),
    verification_scenario(receiver_app_sqlite, "ours+verify[sqlite]"),
    Scenario("ours[uvloop]", "ours", bare_app, loop="uvloop"),
    verification_scenario(receiver_app_memory, "ours+verify[uvloop]", loop="uvloop"),
)


@dataclass(frozen=True)
class Settings:
    """Bounds of one benchmark run; ``quick()`` is the smoke-test size."""

    rounds: int = 4
    duration_s: float = 2.0
    max_requests: int = 200_000
    max_signed_requests: int = 40_000  # pre-signed in memory: bound it to what Python can take
    processes: int = 2
    connections: int = 8
    handshake_duration_s: float = 1.5
    handshake_connections: int = 4
    max_handshakes: int = 20_000
    latency_duration_s: float = 1.0
    max_latency_requests: int = 5_000
    warmup_requests: int = 5
    store_ids: int = 20_000
    asgi_requests: int = 500
    asgi_repeats: int = 9

    @classmethod
    def quick(cls) -> Settings:
        """A few hundred requests per scenario: proves the bench works, measures nothing."""
        return cls(
            rounds=1, duration_s=0.5, max_requests=300, max_signed_requests=300, processes=1,
            connections=2, handshake_duration_s=0.5, handshake_connections=1,
            max_handshakes=20, latency_duration_s=0.5, max_latency_requests=50,
            warmup_requests=2, store_ids=200, asgi_requests=50, asgi_repeats=1,
        )  # fmt: skip


@dataclass(frozen=True)
class Cores:
    """Where the server and the generator run."""

    server: int | None
    generator: tuple[int, ...] | None

    @classmethod
    def split(cls) -> Cores:
        """Server on the first allowed core, generator on the others (needs two cores)."""
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) < 2:
            return cls(None, None)
        return cls(allowed[0], tuple(allowed[1:]))


# --------------------------------------------------------------------------- measuring


@contextlib.contextmanager
def _serve(
    scenario: Scenario, pki: BenchPki, cores: Cores, workdir: Path
) -> Iterator[tuple[int, int]]:
    """Yield (port, pid) of the scenario's server."""
    if scenario.server == "nginx":
        from tests.nginx import run_nginx

        with run_nginx(
            workdir / "nginx",
            cert=Path(pki.server_cert),
            key=Path(pki.server_key),
            client_ca=Path(pki.ca),
            worker_cpu=cores.server,
        ) as nginx:
            yield nginx.port, nginx.pid
        return
    assert scenario.factory is not None
    with run_server(
        scenario.server, scenario.factory, pki, cpu=cores.server, loop=scenario.loop
    ) as server:
        yield server.port, server.pid


Measure = Literal["keep-alive", "handshake", "latency"]
SATURATE: Measure = "keep-alive"
HANDSHAKES: Measure = "handshake"
# One connection, one request in flight: the latency of a request, not of a queue.
LATENCY: Measure = "latency"


def _spec(
    scenario: Scenario,
    measure: Measure,
    port: int,
    *,
    pki: BenchPki,
    cores: Cores,
    settings: Settings,
) -> LoadSpec:
    signed_limit = settings.max_signed_requests if scenario.signed else settings.max_requests
    shape: dict[Measure, tuple[Mode, int, int, int, float]] = {
        # measure: (mode, processes, connections per process, max requests, duration)
        SATURATE: (
            KEEP_ALIVE, settings.processes, settings.connections, signed_limit,
            settings.duration_s,
        ),
        HANDSHAKES: (
            NEW_HANDSHAKE, settings.processes, settings.handshake_connections,
            settings.max_handshakes, settings.handshake_duration_s,
        ),
        LATENCY: (
            KEEP_ALIVE, 1, 1, settings.max_latency_requests, settings.latency_duration_s,
        ),
    }  # fmt: skip
    mode, processes, connections, max_requests, duration_s = shape[measure]
    return LoadSpec(
        port=port,
        ca_file=pki.ca,
        cert_file=pki.client_cert,
        key_file=pki.client_key,
        mode=mode,
        processes=processes,
        connections=connections,
        max_requests=max_requests,
        duration_s=duration_s,
        warmup_requests=settings.warmup_requests,
        cpus=cores.generator,
        signing_secret=SIGNING_SECRET if scenario.signed else None,
    )


Samples = dict[tuple[str, Measure], list[LoadResult]]


@dataclass
class Measurements:
    """Everything one run measured.

    Attributes:
        samples: load results per (scenario, measure), one per round.
        store_rates: dedupe store ids/s per round, by store kind.
        asgi_us: in-process microseconds per request, by app (see :mod:`bench._asgi_cost`).
        cores: where the servers and the generator ran.
    """

    samples: Samples
    store_rates: dict[str, list[float]]
    asgi_us: dict[str, float]
    cores: Cores


# The apps timed in-process: (name, factory, signed).
_ASGI_APPS: tuple[tuple[str, AppFactory, bool], ...] = (
    ("bare Quart", bare_app, False),
    ("Quart+verify", receiver_app_memory, True),
    ("Quart+verify[quart path]", receiver_app_memory_quart, True),
    ("Quart+verify[sqlite]", receiver_app_sqlite, True),
)


def _measures(scenario: Scenario) -> list[Measure]:
    kinds = [SATURATE]
    if scenario.handshake:
        kinds.append(HANDSHAKES)
    if scenario.server != "nginx":  # nginx answers in microseconds: nothing to learn
        kinds.append(LATENCY)
    return kinds


def measure(
    settings: Settings,
    scenarios: tuple[Scenario, ...] = SCENARIOS,
    progress: Callable[[str], None] | None = None,
) -> Measurements:
    """Run every scenario ``settings.rounds`` times, interleaved.

    Every server starts once and stays up (idle ones cost no CPU); each round then runs one
    measure on every scenario back to back before the next measure, the scenario order
    rotating from round to round. Figures that are compared are thus taken seconds apart,
    which matters on a machine that other work shares.

    Then the dedupe stores and the in-process ASGI costs are timed (see
    :mod:`bench._asgi_cost`).
    """
    cores = Cores.split()
    samples: Samples = {}
    stores: dict[str, list[float]] = {"sqlite": [], "memory": []}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp, contextlib.ExitStack() as up:
        workdir = Path(tmp)
        pki = make_pki(workdir)
        servers = {
            scenario.name: up.enter_context(_serve(scenario, pki, cores, workdir / f"s{index}"))
            for index, scenario in enumerate(scenarios)
        }
        for round_index in range(settings.rounds):
            shift = round_index % len(scenarios)
            rotated = scenarios[shift:] + scenarios[:shift]
            for kind in (SATURATE, HANDSHAKES, LATENCY):
                for scenario in rotated:
                    if kind not in _measures(scenario):
                        continue
                    port, pid = servers[scenario.name]
                    spec = _spec(scenario, kind, port, pki=pki, cores=cores, settings=settings)
                    result = run_load(spec, observe_pid=pid)
                    samples.setdefault((scenario.name, kind), []).append(result)
                    if progress is not None:
                        progress(
                            f"round {round_index + 1} {scenario.name} {kind}: {_brief(result)}"
                        )
            rates = _store_rates(workdir / f"store-{round_index}.sqlite3", settings.store_ids)
            for store, rate in rates.items():
                stores[store].append(rate)
        up.close()  # the servers are done: the in-process timing gets the machine to itself
        asgi = asgi_us_per_request(
            _ASGI_APPS, pki, requests=settings.asgi_requests, repeats=settings.asgi_repeats
        )
    return Measurements(samples, stores, asgi, cores)


def _brief(result: LoadResult) -> str:
    return (
        f"{result.rate:.0f}/s p50 {result.p50_ms:.2f} ms p99 {result.p99_ms:.2f} ms "
        f"gen {result.generator_cpu_pct:.0f}% server {result.server_cpu_pct or 0:.0f}% "
        f"statuses {result.statuses} errors {result.errors} reconnects {result.reconnects}"
    )


def _store_rates(path: Path, ids: int) -> dict[str, float]:
    """claim + complete of ``ids`` unique ids, in the event loop: SQLite, then memory."""
    from mtls_hooks.stores._replay import DedupeStore, MemoryDedupeStore, SQLiteDedupeStore

    async def rate(store: DedupeStore) -> float:
        try:
            started = time.perf_counter()
            for index in range(ids):
                key = f"default:msg_{index}"
                await store.claim(key)
                await store.complete(key)
            return ids / (time.perf_counter() - started)
        finally:
            await store.aclose()

    return {
        "sqlite": asyncio.run(rate(SQLiteDedupeStore(path))),
        "memory": asyncio.run(rate(MemoryDedupeStore())),
    }
