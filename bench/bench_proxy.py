"""Proxy mode against direct mTLS: requests/s of the same app, measured in one run.

Two servers, each in its own process on core 0 (the generator on core 1), the same bare
Quart app (POST / reads the body, answers 200):

* ``direct``: our server over pinned mTLS, keep-alive (what ``bench_serving`` calls ``ours``);
* ``proxy``: our server in proxy mode, plain HTTP on 127.0.0.1, ``client_cert_header =
  "nginx"``, trusting 127.0.0.1/32. Every request carries the pinned client's certificate as
  ``X-SSL-Client-Cert`` (URL-encoded PEM, as nginx's ``$ssl_client_escaped_cert``), and every
  request goes through the whole proxy layer: trust check, header parse, verdict (chain and
  CRL with pyOpenSSL, EKU and validity with cryptography, pins), cached per exact header
  value and per certificate, and the scope rewrite.

The generator is :mod:`bench.loadgen`'s selector loop (keep-alive, one request in flight per
connection); for the proxy its sockets stay plain (:class:`_PlainContext`). Rounds alternate
the order; each ratio is the median of per-round ratios. Target: proxy / direct >= 1.0, since
the proxy takes the TLS work off the server.

Run: ``.venv/bin/python -m bench.bench_proxy [--rounds N] [--duration S] [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import socket
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench._servers import BenchPki, bare_app, make_pki, run_server, serving_process
from bench._worker import KEEP_ALIVE, READY_TIMEOUT_S, LoadSpec, _build_requests, _Conn, _Worker
from bench.loadgen import LoadResult, _aggregate, _collect, mp_context, process_cpu_s, run_load

__all__ = ["QUICK_ARGV", "main"]

Row = dict[str, object]
_RESULT_GRACE_S = 30.0


@dataclass(frozen=True)
class Settings:
    """Bounds of one run; ``quick()`` is the smoke-test size."""

    rounds: int = 4
    duration_s: float = 3.0
    max_requests: int = 200_000
    processes: int = 2
    connections: int = 8
    warmup_requests: int = 5

    @classmethod
    def quick(cls) -> Settings:
        """A few hundred requests: proves the bench works, measures nothing."""
        return cls(rounds=1, duration_s=0.5, max_requests=300, processes=1, connections=2)


# --------------------------------------------------------------------------- the proxy server


def _serve_proxy(pki: BenchPki, cpu: int | None, port_out: Any) -> None:
    if cpu is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})
    from mtls_hooks.serving._config import ServerConfig
    from mtls_hooks.serving._serving import create_sockets
    from mtls_hooks.serving._workers import serve

    config = ServerConfig(
        client_ca=(pki.ca,),
        pins=(pki.client_pin,),
        client_cert_header="nginx",
        trusted_proxies=("127.0.0.1/32",),
        bind=("127.0.0.1:0",),
        log_level="WARNING",
    )
    sockets = create_sockets(config)
    port_out.send(sockets[0].getsockname()[1])
    serve(bare_app(pki), config, sockets=sockets)


@dataclass(frozen=True)
class _Running:
    port: int
    pid: int


@contextlib.contextmanager
def _proxy_server(pki: BenchPki, cpu: int | None) -> Iterator[_Running]:
    # No probe: the proxy listener speaks plain HTTP, without a client certificate.
    with serving_process(
        _serve_proxy, lambda out: (pki, cpu, out), None, what="proxy-mode"
    ) as server:
        yield _Running(server.port, server.pid)


# --------------------------------------------------------------------------- plain generator


class _PlainSocket:
    """A plain TCP socket with the non-blocking ``SSLSocket`` surface the worker drives."""

    __slots__ = ("_sock",)

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def fileno(self) -> int:
        return self._sock.fileno()

    def do_handshake(self) -> None:
        """Nothing to negotiate."""

    def send(self, data: Any) -> int:
        try:
            return self._sock.send(data)
        except BlockingIOError:
            raise ssl.SSLWantWriteError from None

    def recv(self, size: int) -> bytes:
        try:
            return self._sock.recv(size)
        except BlockingIOError:
            raise ssl.SSLWantReadError from None

    def close(self) -> None:
        self._sock.close()


class _PlainContext:
    def wrap_socket(self, sock: socket.socket, **_: Any) -> _PlainSocket:
        return _PlainSocket(sock)


def _plain_generator(
    job: tuple[LoadSpec, bytes], index: int, budget: int, go: Any, results: Any
) -> None:
    """``bench._worker.generator_process`` over plain sockets, each request with a header."""
    spec, header = job
    try:
        if spec.cpus:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, set(spec.cpus))
        warmups = spec.connections * spec.warmup_requests
        requests = [
            request.replace(b"\r\n\r\n", b"\r\n" + header + b"\r\n\r\n", 1)
            for request in _build_requests(spec, budget + warmups)
        ]
        worker = _Worker(spec, budget, requests)
        worker.ctx = _PlainContext()  # type: ignore[assignment]
        conns = [_Conn() for _ in range(spec.connections)]
        worker.warm_up(conns, time.monotonic() + READY_TIMEOUT_S / 2)
        results.put(("ready", index, None))
        if not go.wait(READY_TIMEOUT_S):
            return
        start, cpu_s = worker.run(conns, time.monotonic() + spec.duration_s)
        worker.close_all(conns)
        results.put(
            (
                "result",
                index,
                {
                    "start": start,
                    "end": worker.last_done or time.monotonic(),
                    "cpu_s": cpu_s,
                    "completed": worker.completed,
                    "errors": worker.errors,
                    "reconnects": worker.reconnects,
                    "resent": worker.resent,
                    "statuses": dict(worker.statuses),
                    "latencies": worker.latencies.tobytes(),
                    "exhausted": worker.started >= budget,
                },
            )
        )
    except BaseException as exc:
        results.put(("error", index, f"{type(exc).__name__}: {exc}"))
        raise


def _run_plain_load(spec: LoadSpec, header: bytes, observe_pid: int) -> LoadResult:
    ctx = mp_context()
    results = ctx.Queue()
    go = ctx.Event()
    per_process = max(1, math.ceil(spec.max_requests / spec.processes))
    procs = [
        ctx.Process(  # type: ignore[attr-defined]
            target=_plain_generator,
            args=((spec, header), index, per_process, go, results),
            daemon=True,
        )
        for index in range(spec.processes)
    ]
    for proc in procs:
        proc.start()
    try:
        _collect(results, "ready", spec.processes, time.monotonic() + READY_TIMEOUT_S)
        server_cpu = process_cpu_s(observe_pid)
        window_start = time.monotonic()
        go.set()
        payloads = _collect(
            results, "result", spec.processes, time.monotonic() + spec.duration_s + _RESULT_GRACE_S
        )
        server_cpu = process_cpu_s(observe_pid) - server_cpu
        window_s = time.monotonic() - window_start
    finally:
        go.set()
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        results.close()
    result = _aggregate(spec, payloads)
    result.server_cpu_pct = 100 * server_cpu / max(window_s, 1e-9)
    result.server_us_per_request = 1e6 * server_cpu / max(result.completed, 1)
    return result


# --------------------------------------------------------------------------- measuring


def _cores() -> tuple[int | None, tuple[int, ...] | None]:
    allowed = sorted(os.sched_getaffinity(0))
    return (allowed[0], tuple(allowed[1:])) if len(allowed) >= 2 else (None, None)


def _header(pki: BenchPki) -> bytes:
    leaf_pem = Path(pki.client_cert).read_text().split("-----END CERTIFICATE-----")[0]
    return f"X-SSL-Client-Cert: {quote(leaf_pem + '-----END CERTIFICATE-----', safe='')}".encode()


def measure(settings: Settings, *, progress: Callable[[str], None] | None = None) -> list[Row]:
    """Run both scenarios ``settings.rounds`` times, interleaved; return the table rows."""
    server_cpu, generator_cpus = _cores()
    samples: dict[str, list[LoadResult]] = {"direct": [], "proxy": []}
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        pki = make_pki(Path(tmp))
        header = _header(pki)
        with (
            run_server("ours", bare_app, pki, cpu=server_cpu) as direct,
            _proxy_server(pki, server_cpu) as proxy,
        ):
            for index in range(settings.rounds):
                order = ("direct", "proxy") if index % 2 == 0 else ("proxy", "direct")
                for name in order:
                    spec = LoadSpec(
                        port=direct.port if name == "direct" else proxy.port,
                        ca_file=pki.ca,
                        cert_file=pki.client_cert,
                        key_file=pki.client_key,
                        mode=KEEP_ALIVE,
                        processes=settings.processes,
                        connections=settings.connections,
                        max_requests=settings.max_requests,
                        duration_s=settings.duration_s,
                        warmup_requests=settings.warmup_requests,
                        cpus=generator_cpus,
                    )
                    if name == "direct":
                        result = run_load(spec, observe_pid=direct.pid)
                    else:
                        result = _run_plain_load(spec, header, proxy.pid)
                    samples[name].append(result)
                    if progress is not None:
                        progress(f"round {index} {name}: {result.rate:.0f} req/s {result.statuses}")
    return _rows(samples, settings)


def _rows(samples: dict[str, list[LoadResult]], settings: Settings) -> list[Row]:
    rows: list[Row] = []
    for name, results in samples.items():
        rate = statistics.median(r.rate for r in results)
        cost = statistics.median(r.server_us_per_request or 0.0 for r in results)
        gen = statistics.median(r.generator_cpu_pct / max(r.generator_cpus, 1) for r in results)
        not_ok = sum(r.completed - r.ok for r in results) + sum(r.errors for r in results)
        rows.append(
            {
                "bench": "proxy",
                "case": f"{name} keep-alive",
                "value": round(rate),
                "unit": "req/s",
                "note": f"server {cost:.0f} us CPU/req, generator {gen:.0f}% of its cores, "
                f"{not_ok} non-2xx or errors; median of {settings.rounds}",
            }
        )
    pairs = list(zip(samples["proxy"], samples["direct"], strict=True))
    ratio = statistics.median(p.rate / d.rate for p, d in pairs if d.rate)
    capacity = statistics.median(
        (d.server_us_per_request or 0.0) / p.server_us_per_request
        for p, d in pairs
        if p.server_us_per_request
    )
    # Sharing the machine only ever slows a round: each side's best round is its least
    # disturbed one (timeit's reasoning), a cross-check of the median.
    best = max(p.rate for p, _ in pairs) / max(d.rate for _, d in pairs)
    rows.append(
        {
            "bench": "proxy",
            "case": "proxy (plain HTTP, re-verified) / direct mTLS, req/s",
            "value": round(ratio, 2),
            "unit": "ratio",
            "target": ">= 1.0",
            "ok": ratio >= 1.0,
            "note": f"per server CPU-s {capacity:.2f}; best rounds {best:.2f}; "
            "median of per-round ratios",
        }
    )
    return rows


def main(argv: list[str] | None = None) -> list[Row]:
    """Measure, print the table and return its rows for ``bench/run_all.py``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run, not a measurement")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--duration", type=float, default=None, help="seconds per run")
    parser.add_argument("--verbose", action="store_true", help="print every run")
    args = parser.parse_args(argv)
    settings = Settings.quick() if args.quick else Settings()
    if args.rounds is not None:
        settings = dataclasses.replace(settings, rounds=args.rounds)
    if args.duration is not None:
        settings = dataclasses.replace(settings, duration_s=args.duration)
    progress = (lambda line: print(line, flush=True)) if args.verbose else None
    rows = measure(settings, progress=progress)
    for row in rows:
        verdict = (
            f"  (target {row['target']}: {'ok' if row['ok'] else 'MISSED'})"
            if "target" in row
            else ""
        )
        print(f"{row['case']:<55} {row['value']:>8} {row['unit']}{verdict}  {row.get('note', '')}")
    return rows


QUICK_ARGV = ["--quick"]

if __name__ == "__main__":
    main(sys.argv[1:])
