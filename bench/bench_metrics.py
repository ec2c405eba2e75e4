"""Metrics on against metrics off: the full receiver's keep-alive rate, measured in one run.

Two servers, each in its own process on core 0 (the generator on core 1), the same receiver
app (pinning, HMAC, tolerance, memory dedupe, a handler):

* ``off``: nothing recorded (``metrics_bind`` unset, the default);
* ``on``: :func:`mtls_hooks.enable_metrics` in the server process, so every handshake and
  every webhook decision counts and the request duration is observed.

Rounds alternate the order; each ratio is the median of per-round ratios, for req/s and for
server CPU per request (read from ``/proc``, far steadier on a shared machine). Target from
issue 13: on / off >= 0.95.

Run: ``.venv/bin/python -m bench.bench_metrics [--rounds N] [--duration S] [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from quart import Quart

from bench._servers import SIGNING_SECRET, BenchPki, make_pki, receiver_app_memory, run_server
from bench.loadgen import KEEP_ALIVE, LoadResult, LoadSpec, run_load
from bench.run_all import Row

__all__ = ["QUICK_ARGV", "main"]

QUICK_ARGV = ["--quick"]
_TARGET = 0.95


def receiver_app_metrics(pki: BenchPki) -> Quart:
    """The memory-store receiver with metrics recorded (runs in the server process)."""
    from mtls_hooks.metrics._registry import enable_metrics

    enable_metrics()
    return receiver_app_memory(pki)


def _spec(pki: BenchPki, port: int, args: argparse.Namespace) -> LoadSpec:
    return LoadSpec(
        port=port,
        ca_file=pki.ca,
        cert_file=pki.client_cert,
        key_file=pki.client_key,
        mode=KEEP_ALIVE,
        processes=1,
        connections=args.connections,
        max_requests=args.max_requests,
        duration_s=args.duration,
        cpus=(1,),
        signing_secret=SIGNING_SECRET,
        path="/",
    )


def _one(pki: BenchPki, metrics: bool, args: argparse.Namespace) -> LoadResult:
    factory = receiver_app_metrics if metrics else receiver_app_memory
    with run_server("ours", factory, pki, cpu=0) as server:
        return run_load(_spec(pki, server.port, args), observe_pid=server.pid)


def main(argv: list[str] | None = None) -> list[Row]:
    """Measure and print; return the rows for ``bench.run_all``."""
    parser = argparse.ArgumentParser(prog="bench_metrics")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--max-requests", type=int, default=40_000)
    parser.add_argument("--quick", action="store_true", help="one short round (CI smoke)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.max_requests = 1, 1.0, 3_000
    rates: list[float] = []
    cpus: list[float] = []
    on_rates: list[float] = []
    off_rates: list[float] = []
    with tempfile.TemporaryDirectory() as directory:
        pki = make_pki(Path(directory))
        for index in range(args.rounds):
            order = (False, True) if index % 2 == 0 else (True, False)
            results = {metrics: _one(pki, metrics, args) for metrics in order}
            off, on = results[False], results[True]
            for result in (off, on):
                if result.ok != result.completed or result.errors:
                    msg = f"non-2xx answers or errors: {result.statuses}, {result.errors}"
                    raise RuntimeError(msg)
            on_rates.append(on.rate)
            off_rates.append(off.rate)
            rates.append(on.rate / off.rate)
            if on.server_us_per_request and off.server_us_per_request:
                cpus.append(off.server_us_per_request / on.server_us_per_request)
    rate_ratio = statistics.median(rates)
    rows: list[Row] = [
        {"bench": "metrics", "case": "metrics off keep-alive",
         "value": round(statistics.median(off_rates)), "unit": "req/s"},
        {"bench": "metrics", "case": "metrics on keep-alive",
         "value": round(statistics.median(on_rates)), "unit": "req/s"},
        {"bench": "metrics", "case": "metrics on / off, keep-alive req/s",
         "value": round(rate_ratio, 2), "unit": "ratio", "target": f">= {_TARGET}",
         "verdict": "ok" if rate_ratio >= _TARGET else "MISSED",
         "note": f"median of {args.rounds} per-round ratios"},
    ]  # fmt: skip
    if cpus:
        cpu_ratio = statistics.median(cpus)
        rows.append(
            {
                "bench": "metrics",
                "case": "metrics on / off, per server CPU-s",
                "value": round(cpu_ratio, 2),
                "unit": "ratio",
                "target": f">= {_TARGET}",
                "verdict": "ok" if cpu_ratio >= _TARGET else "MISSED",
                "note": "off's server CPU per request / on's",
            }
        )
    for row in rows:
        print(row)
    return rows


if __name__ == "__main__":
    main()
