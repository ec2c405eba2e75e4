"""Inbox mode against direct handling: acknowledged req/s and server CPU per request, one run.

Every server is our server with :class:`~mtls_hooks.receiver._receiver.WebhookReceiver` (pin
rule, HMAC, timestamp, a trivial async handler), in its own process pinned to the first core,
the load generator (:mod:`bench.loadgen`, keep-alive mTLS, signed 1 KiB POSTs with a fresh
``webhook-id`` each) on the second. Scenarios:

* ``direct[memory]``: the handler runs in the request, in-memory dedupe (the issue's
  "direct handling", and the baseline of its row);
* ``direct[sqlite dedupe]``: the same with the SQLite dedupe store (its default
  ``synchronous=normal``);
* ``inbox[sqlite]``: ``mode="inbox"``, a SQLite inbox with the default ``synchronous=full``
  (every 202 leaves after an fsync'd commit), ``MTLS_HOOKS_INBOX_CONCURRENCY=0``: the server
  runs no handlers, the events pile up; this is acknowledgement throughput;
* ``inbox[sqlite normal]``: the same with ``?synchronous=normal``;
* ``inbox[postgresql]``: a PostgreSQL inbox (127.0.0.1, a fresh schema, dropped after);
  PostgreSQL's own CPU (its backends for this server) is reported beside the server's;
* ``inbox[sqlite]+worker``: the SQLite inbox with the in-app worker on
  (``INBOX_CONCURRENCY=8``): acknowledged req/s while the handlers run in the same process.
  After its load the bench waits (bounded) until the backlog is handled, so the next
  scenario gets a quiet core, and reports how long that took.

Each run ends by its request count (a wall-time bound guards a stall), scenarios run
interleaved with the order rotating every round, and each ratio is the median of per-round
ratios, in req/s and per server CPU-s (a time-shared core lowers the rate, not the CPU a
request costs: prefer the latter on a busy machine). The note gives the per-round spread.

The inbox groups the events that arrive during one commit into the next, so its cost per
event falls as concurrency rises: ``--connections`` (per generator process; two processes, 16
each by default: the 32 keep-alive connections of the issues' reference runs) moves its
ratios (at 16 in all, inbox ÷ direct[memory] per CPU-s measured 0.69 where 32 gave 0.78-0.80).

Correctness guard: after the servers stop, every inbox must hold exactly the events that were
acknowledged with 202 (timed and warm-up requests); anything else raises.

Run: ``.venv/bin/python -m bench.bench_inbox [--rounds N] [--requests N] [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from bench._servers import SIGNING_SECRET, BenchPki, make_pki, run_server
from bench.bench_serving import print_rows
from bench.loadgen import KEEP_ALIVE, LoadResult, LoadSpec, process_cpu_s, run_load

if TYPE_CHECKING:
    from quart import Quart

    from mtls_hooks.queue._protocol import QueueStore

__all__ = ["QUICK_ARGV", "inbox_receiver_app", "main"]

#: Arguments of ``bench.run_all --quick``: a smoke run that measures nothing.
QUICK_ARGV = ["--quick"]
PG_URL = os.environ.get("MTLS_HOOKS_TEST_PG_URL", "postgresql://root@127.0.0.1:5432/test")
Row = dict[str, object]

_TARGET = 0.8  # issue 11: inbox mode / direct handling, req/s acknowledged
_DEDUPE_TARGET = 0.9  # issue 11: receiver with SQLite dedupe / the memory store
_DRAIN_TIMEOUT_S = 120.0
_DRAIN_POLL_S = 0.2
_RUN_BOUND_S = 30.0  # a stalled run ends here; runs normally end by their request count


# --------------------------------------------------------------------------- the app


def inbox_receiver_app(
    pki: BenchPki, *, dedupe: str, inbox_url: str | None, concurrency: int
) -> Quart:
    """The receiver under test (built in the server process).

    Args:
        pki: the run's certificates.
        dedupe: ``"memory"``, or a SQLite file for the dedupe store (direct mode).
        inbox_url: the inbox store URL; ``None`` serves the endpoint in direct mode.
        concurrency: ``MTLS_HOOKS_INBOX_CONCURRENCY`` (0: no handlers in this process).
    """
    from quart import Quart

    from mtls_hooks.core._events import WebhookEvent
    from mtls_hooks.receiver._receiver import WebhookReceiver
    from mtls_hooks.stores._replay import DedupeStore, MemoryDedupeStore, SQLiteDedupeStore

    app = Quart("bench_inbox")
    store: DedupeStore = MemoryDedupeStore() if dedupe == "memory" else SQLiteDedupeStore(dedupe)
    if inbox_url is not None:
        app.config["MTLS_HOOKS_INBOX_URL"] = inbox_url
        app.config["MTLS_HOOKS_INBOX_CONCURRENCY"] = concurrency
    hooks = WebhookReceiver(
        app,
        path="/",
        keys=[SIGNING_SECRET],
        pins=[pki.client_pin],
        store=store,
        mode="direct" if inbox_url is None else "inbox",
    )

    @hooks.on_any
    async def handle(event: WebhookEvent) -> None:
        return None

    return app


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    """One server: its dedupe store (direct mode) or inbox, and its in-app worker."""

    name: str
    store: str  # "memory", "sqlite dedupe", "sqlite", "sqlite normal" or "postgresql"
    concurrency: int = 0

    @property
    def inbox(self) -> bool:
        return self.store in ("sqlite", "sqlite normal", "postgresql")


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("direct[memory]", "memory"),
    Scenario("direct[sqlite dedupe]", "sqlite dedupe"),
    Scenario("inbox[sqlite]", "sqlite"),
    Scenario("inbox[sqlite normal]", "sqlite normal"),
    Scenario("inbox[postgresql]", "postgresql"),
    Scenario("inbox[sqlite]+worker", "sqlite", concurrency=8),
)
_BASELINES = ("direct[memory]", "direct[sqlite dedupe]")


@dataclass
class Sample:
    """One run of one scenario: the load result and what PostgreSQL spent on it."""

    result: LoadResult
    pg_cpu_s: float = 0.0
    drain_s: float | None = None

    @property
    def server_us(self) -> float:
        return self.result.server_us_per_request or float("nan")

    @property
    def pg_us(self) -> float:
        return 1e6 * self.pg_cpu_s / max(self.result.completed, 1)


@dataclass
class Served:
    """A running scenario: where it listens, its inbox URL, and what it acknowledged."""

    scenario: Scenario
    port: int
    pid: int
    inbox_url: str | None
    pg_app_name: str | None
    acknowledged: int = 0
    in_flight_bound: int = 0  # events perhaps stored but not answered (a run cut by time)
    samples: list[Sample] = field(default_factory=list)


@contextlib.contextmanager
def _pg_schema() -> Iterator[str]:
    """A fresh schema; yields a URL whose search_path selects it. Dropped on exit."""
    import psycopg

    schema = "bench_inbox_" + uuid.uuid4().hex[:10]
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _pg_backends(app_name: str) -> list[int]:
    """PIDs of the PostgreSQL backends serving connections named ``app_name``."""
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app_name,)
        ).fetchall()
    return [int(row[0]) for row in rows]


def _inbox_url(scenario: Scenario, workdir: Path, pg_url: str | None) -> tuple[str | None, str]:
    """(inbox URL, the dedupe argument of the app) for ``scenario``."""
    if scenario.store == "memory":
        return None, "memory"
    if scenario.store == "sqlite dedupe":
        return None, str(workdir / "dedupe.sqlite3")
    if scenario.store == "postgresql":
        assert pg_url is not None
        return pg_url, "memory"
    path = workdir / f"inbox-{scenario.store.replace(' ', '-')}-{scenario.concurrency}.sqlite3"
    query = "?synchronous=normal" if scenario.store == "sqlite normal" else ""
    return f"sqlite:///{path}{query}", "memory"


def _cores() -> tuple[int | None, tuple[int, ...] | None]:
    """Server on the first allowed core, the generator on the others (needs two cores)."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, None
    return allowed[0], tuple(allowed[1:])


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Settings:
    """Bounds of one run."""

    rounds: int
    requests: int
    processes: int = 2
    connections: int = 16
    warmup_requests: int = 2
    cores: tuple[int | None, tuple[int, ...] | None] = (None, None)


def _spec(pki: BenchPki, port: int, settings: Settings) -> LoadSpec:
    return LoadSpec(
        port=port,
        ca_file=pki.ca,
        cert_file=pki.client_cert,
        key_file=pki.client_key,
        mode=KEEP_ALIVE,
        processes=settings.processes,
        connections=settings.connections,
        max_requests=settings.requests,
        duration_s=_RUN_BOUND_S,
        warmup_requests=settings.warmup_requests,
        cpus=settings.cores[1],
        signing_secret=SIGNING_SECRET,
    )


def _pg_cpu(app_name: str | None) -> dict[int, float]:
    if app_name is None:
        return {}
    return {pid: process_cpu_s(pid) for pid in _pg_backends(app_name)}


def _one_run(served: Served, pki: BenchPki, settings: Settings) -> Sample:
    before = _pg_cpu(served.pg_app_name)
    result = run_load(_spec(pki, served.port, settings), observe_pid=served.pid)
    after = _pg_cpu(served.pg_app_name)
    # A backend that appeared during the run counts from zero.
    pg_cpu_s = sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())
    if result.errors or result.ok != result.completed:
        msg = (
            f"{served.scenario.name}: errors or non-2xx answers: {result.statuses}, "
            f"{result.errors} errors"
        )
        raise RuntimeError(msg)
    # The warm-up requests (at least one per connection) were answered 202 as well.
    warm = settings.processes * settings.connections * max(1, settings.warmup_requests)
    served.acknowledged += result.ok + warm
    if result.timed_out:  # cut by time: the requests in flight may be stored, unanswered
        served.in_flight_bound += settings.processes * settings.connections
    sample = Sample(result, pg_cpu_s)
    if served.scenario.concurrency and served.inbox_url is not None:
        sample.drain_s = _drain(served.inbox_url, served.scenario.name)
    return sample


def _open_inbox_store(url: str) -> QueueStore:
    from mtls_hooks.queue._url import open_store

    return open_store(url)


def _drain(url: str, name: str) -> float:
    """Wait (bounded) until the in-app worker has handled every stored event."""
    store = _open_inbox_store(url)
    started = time.monotonic()
    try:
        while time.monotonic() - started < _DRAIN_TIMEOUT_S:
            by_state = store.stats("inbox").by_state
            if sum(n for state, n in by_state.items() if state not in ("done", "failed")) == 0:
                return time.monotonic() - started
            time.sleep(_DRAIN_POLL_S)
    finally:
        store.close()
    msg = f"{name}: the in-app worker did not handle the backlog within {_DRAIN_TIMEOUT_S} s"
    raise RuntimeError(msg)


def _check_inboxes(served: list[Served]) -> list[Row]:
    """Every inbox holds exactly the acknowledged events (a bound if a run was cut)."""
    rows: list[Row] = []
    for one in served:
        if one.inbox_url is None:
            continue
        store = _open_inbox_store(one.inbox_url)
        try:
            by_state = dict(store.stats("inbox").by_state)
        finally:
            store.close()
        held = sum(by_state.values())
        low, high = one.acknowledged, one.acknowledged + one.in_flight_bound
        if not low <= held <= high:
            msg = (
                f"{one.scenario.name}: the inbox holds {held} events but {one.acknowledged} "
                f"were acknowledged (+{one.in_flight_bound} possibly in flight): {by_state}"
            )
            raise RuntimeError(msg)
        states = ", ".join(f"{state} {n}" for state, n in sorted(by_state.items()) if n)
        exact = "exactly" if one.in_flight_bound == 0 else f"within +{one.in_flight_bound} of"
        rows.append(
            {
                "bench": "inbox",
                "case": f"{one.scenario.name} events stored / acknowledged",
                "value": held,
                "unit": "events",
                "note": f"{exact} the {one.acknowledged} answered 202 ({states})",
            }
        )
    return rows


def measure(settings: Settings, scenarios: tuple[Scenario, ...]) -> tuple[list[Served], list[Row]]:
    """Start every server once, run the rounds interleaved, then check the inboxes."""
    needs_pg = any(s.store == "postgresql" for s in scenarios)
    with (
        tempfile.TemporaryDirectory(prefix="bench-inbox-") as tmp,
        contextlib.ExitStack() as schemas,
    ):
        workdir = Path(tmp)
        pki = make_pki(workdir / "pki")
        pg_url = schemas.enter_context(_pg_schema()) if needs_pg else None
        served: list[Served] = []
        with contextlib.ExitStack() as servers:
            for scenario in scenarios:
                inbox_url, dedupe = _inbox_url(scenario, workdir, pg_url)
                app_name = None
                if scenario.store == "postgresql" and inbox_url is not None:
                    app_name = f"bench_inbox_{uuid.uuid4().hex[:8]}"
                    inbox_url = f"{inbox_url}&application_name={app_name}"
                factory = functools.partial(
                    inbox_receiver_app,
                    dedupe=dedupe,
                    inbox_url=inbox_url,
                    concurrency=scenario.concurrency,
                )
                server = servers.enter_context(
                    run_server("ours", factory, pki, cpu=settings.cores[0])
                )
                served.append(Served(scenario, server.port, server.pid, inbox_url, app_name))
            for round_index in range(settings.rounds):
                shift = round_index % len(served)
                for one in served[shift:] + served[:shift]:
                    one.samples.append(_one_run(one, pki, settings))
        # The servers are stopped (each closed its inbox): count what they stored.
        guard = _check_inboxes(served)
    return served, guard


# --------------------------------------------------------------------------- rows


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _rate_row(one: Served, settings: Settings) -> Row:
    samples = one.samples
    rate = _median([s.result.rate for s in samples])
    costs = [s.server_us for s in samples]
    server_us = _median(costs)
    note = (
        f"server {server_us:.0f} us CPU/req (rounds {min(costs):.0f}-{max(costs):.0f}), "
        f"req/s rounds {min(s.result.rate for s in samples):.0f}-"
        f"{max(s.result.rate for s in samples):.0f}, "
        f"p50 {_median([s.result.p50_ms for s in samples]):.2f} ms, "
        f"p99 {_median([s.result.p99_ms for s in samples]):.2f} ms, "
        f"server CPU {_median([s.result.server_cpu_pct or 0.0 for s in samples]):.0f}%, "
        f"gen CPU {_median([s.result.generator_cpu_pct for s in samples]):.0f}%/"
        f"{samples[0].result.generator_cpus} core"
    )
    if one.scenario.store == "postgresql":
        note += f", PostgreSQL {_median([s.pg_us for s in samples]):.0f} us CPU/req"
    drains = [s.drain_s for s in samples if s.drain_s is not None]
    if drains:
        note += f", backlog handled {_median(drains):.1f} s after the load ended"
    reconnects = sum(s.result.reconnects for s in samples)
    if reconnects:
        note += f", {reconnects} server closes"
    server_core, generator_cores = settings.cores
    where = (
        f"server core {server_core}, generator cores {list(generator_cores)}"
        if generator_cores
        else "unpinned"
    )
    connections = settings.processes * settings.connections
    note += (
        f"; median of {len(samples)} rounds of {settings.requests} requests, "
        f"{connections} connections, {where}"
    )
    return {
        "bench": "inbox",
        "case": f"{one.scenario.name} keep-alive",
        "value": round(rate),
        "unit": "req/s",
        "note": note,
    }


def _capacity(sample: Sample, *, with_pg: bool) -> float:
    """Requests per second of CPU (server, plus PostgreSQL's if asked)."""
    us = sample.server_us + (sample.pg_us if with_pg else 0.0)
    return 1e6 / us if us > 0 else float("nan")


def _ratios(top: Served, bottom: Served, value: Callable[[Sample], float]) -> list[float]:
    return [value(a) / value(b) for a, b in zip(top.samples, bottom.samples, strict=False)]


def _ratio_rows(served: list[Served]) -> list[Row]:
    by_name = {one.scenario.name: one for one in served}
    rows: list[Row] = []
    for top in served:
        if not top.scenario.inbox:
            continue
        for base_name in _BASELINES:
            bottom = by_name.get(base_name)
            if bottom is None:
                continue
            # The row: the default SQLite inbox (no handlers in the server) against
            # direct handling with the default (memory) dedupe store.
            target = top.scenario.name == "inbox[sqlite]" and base_name == "direct[memory]"
            rates = _ratios(top, bottom, lambda s: s.result.rate)
            cpus = _ratios(top, bottom, lambda s: _capacity(s, with_pg=False))
            for metric, values in (("req/s", rates), ("per server CPU-s", cpus)):
                value = _median(values)
                row: Row = {
                    "bench": "inbox",
                    "case": f"{top.scenario.name} / {base_name}, {metric}",
                    "value": round(value, 2),
                    "unit": "ratio",
                    "note": f"rounds {min(values):.2f}-{max(values):.2f}",
                }
                if target:
                    # Three decimals: a 0.797 must not read as a missed 0.8.
                    row.update(value=round(value, 3), target=f">= {_TARGET:g}", ok=value >= _TARGET)
                    row["note"] = (
                        f"{row['note']}; issue 11's row: acknowledged events, inbox on SQLite "
                        "(synchronous=full, no handlers in the server) / direct handling with "
                        "the memory dedupe store"
                    )
                if top.scenario.store == "postgresql" and metric != "req/s":
                    with_pg = _median(_ratios(top, bottom, lambda s: _capacity(s, with_pg=True)))
                    row["note"] = (
                        f"{row['note']}; {with_pg:.2f} counting PostgreSQL's backend CPU too"
                    )
                rows.append(row)
    rows += _dedupe_rows(by_name)
    return rows


def _dedupe_rows(by_name: dict[str, Served]) -> list[Row]:
    """Issue 11's other SQLite row, from the same run: direct handling with SQLite dedupe over
    the memory store (``bench_serving`` measures it at 16 connections, where it is lower)."""
    top, bottom = by_name.get("direct[sqlite dedupe]"), by_name.get("direct[memory]")
    if top is None or bottom is None:
        return []
    rows: list[Row] = []
    rates = _ratios(top, bottom, lambda s: s.result.rate)
    cpus = _ratios(top, bottom, lambda s: _capacity(s, with_pg=False))
    for metric, values in (("req/s", rates), ("per server CPU-s", cpus)):
        value = _median(values)
        rows.append(
            {
                "bench": "inbox",
                "case": f"direct[sqlite dedupe] / direct[memory], {metric}",
                "value": round(value, 3),
                "unit": "ratio",
                "target": f">= {_DEDUPE_TARGET:g}",
                "ok": value >= _DEDUPE_TARGET,
                "note": f"rounds {min(values):.2f}-{max(values):.2f}; issue 11's SQLite dedupe row",
            }
        )
    return rows


def main(argv: list[str] | None = None) -> list[Row]:
    """Measure, print the table and return its rows for ``bench/run_all.py``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=5000, help="per run (count bound)")
    parser.add_argument("--connections", type=int, default=16, help="per generator process")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=[s.name for s in SCENARIOS],
        help="run only these (repeatable); ratios need their baseline too",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run, not a measurement")
    args = parser.parse_args(argv)
    settings = Settings(
        rounds=1 if args.quick else args.rounds,
        requests=200 if args.quick else args.requests,
        processes=1 if args.quick else 2,
        connections=2 if args.quick else args.connections,
        cores=_cores(),
    )
    scenarios = tuple(s for s in SCENARIOS if not args.scenario or s.name in args.scenario)
    served, guard = measure(settings, scenarios)
    rows = [_rate_row(one, settings) for one in served]
    rows.extend(_ratio_rows(served))
    rows.extend(guard)
    print_rows(rows)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
