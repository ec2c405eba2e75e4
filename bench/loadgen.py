"""A closed-loop HTTP/1.1 load generator on non-blocking TLS sockets with a client certificate.

Only ApacheBench presents a client certificate among the usual tools, and its HTTP/1.0
keep-alive works against nginx only (../shared/DESIGN.md, "Performance facts"). So: N
processes x M connections, each connection with one request in flight, driven by a
``selectors`` loop over ``ssl.SSLSocket`` objects (no asyncio, no HTTP library: the generator
must cost far less per request than the server it measures).

Two modes:

* ``keep-alive``: every connection is opened and warmed before the clock starts, then sends
  1 KiB POSTs back to back. When the server closes a connection (Hypercorn does after
  ``keep_alive_max_requests``), the generator reconnects and carries on, counting it.
* ``handshake``: every request opens a new TCP connection, does a full TLS handshake (no
  session resumption) and sends ``Connection: close``: connections/s.

Every run is bounded by a request count and by wall time. Each process reports the CPU time
it used during the timed window (``os.times``), so a result can show that the generator was
not the bottleneck.

This module starts the processes and aggregates their results; the loop each one runs is in
``bench/_worker.py``, the HTTP framing in ``bench/_http.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import queue
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._http import json_body, parse_response
from bench._worker import (
    KEEP_ALIVE,
    NEW_HANDSHAKE,
    READY_TIMEOUT_S,
    LoadSpec,
    Mode,
    generator_process,
)

__all__ = [
    "KEEP_ALIVE",
    "NEW_HANDSHAKE",
    "LoadResult",
    "LoadSpec",
    "Mode",
    "json_body",
    "mp_context",
    "parse_response",
    "process_cpu_s",
    "run_load",
]

_RESULT_GRACE_S = 30.0
_JOIN_TIMEOUT_S = 5.0
_PRELOAD = (
    "bench.loadgen",
    "bench._servers",
    "quart",
    "hypercorn.asyncio",
    "mtls_hooks.serving._workers",
    "mtls_hooks.receiver._receiver",
)


@dataclass
class LoadResult:
    """The outcome of one ``run_load``; rates are over the timed window only.

    Attributes:
        mode: the spec's mode.
        completed: responses fully received in the timed window (any status).
        ok: responses with a 2xx status.
        errors: requests that failed (handshake refused, reset mid-response, bad framing).
        reconnects: connections the server closed that the generator reopened (keep-alive).
        resent: requests sent again because the server closed before answering.
        statuses: status code -> count.
        elapsed_s: from the start signal to the last completion.
        rate: ``completed / elapsed_s`` (requests/s, or connections/s in handshake mode).
        p50_ms: median latency (handshake mode: connect + handshake + request).
        p99_ms: 99th percentile latency.
        generator_cpu_pct: CPU used by all generator processes during the window, in percent
            of one core; near ``100 * len(cpus)`` the generator itself is the bottleneck.
        generator_cpus: how many CPUs the generator was allowed to use.
        server_cpu_pct: CPU of the observed server process (and its children) over the same
            window, in percent of one core; ``None`` when no PID was given.
        generator_us_per_request: generator CPU per completed request, in microseconds.
        server_us_per_request: server CPU per completed request (``None`` without a PID).
            On a shared machine these per-request costs stay meaningful when rates and CPU
            percentages do not: a time-shared core lowers the rate, not the work per request.
        processes: generator processes.
        connections: total concurrent connections.
        timed_out: True when the wall-time bound ended the run before the count bound.
    """

    mode: Mode
    completed: int = 0
    ok: int = 0
    errors: int = 0
    reconnects: int = 0
    resent: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    rate: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    generator_cpu_pct: float = 0.0
    generator_cpus: int = 0
    server_cpu_pct: float | None = None
    generator_us_per_request: float = 0.0
    server_us_per_request: float | None = None
    processes: int = 0
    connections: int = 0
    timed_out: bool = False

    def to_json(self) -> str:
        """Serialise (status keys become strings)."""
        return json.dumps(dataclasses.asdict(self))


def mp_context() -> multiprocessing.context.BaseContext:
    """The multiprocessing context for generator and server processes.

    ``forkserver``: children fork from a clean single-threaded process (a pytest-xdist worker
    has threads, so plain ``fork`` is unsafe) without re-importing everything as ``spawn``
    would. The server stacks are preloaded there once, so each server process starts fast.
    """
    ctx = multiprocessing.get_context("forkserver")
    # Only takes effect before the forkserver starts; a missing module is skipped there.
    ctx.set_forkserver_preload(list(_PRELOAD))
    return ctx


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    rank = max(0, math.ceil(fraction * len(sorted_values)) - 1)
    return sorted_values[rank]


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its live children, from /proc.

    Children count because nginx serves from a worker forked by the master we started.
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids.extend(int(child) for child in children)
    for one in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{one}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def run_load(spec: LoadSpec, *, observe_pid: int | None = None) -> LoadResult:
    """Run the generator processes against the server and aggregate their results.

    Args:
        spec: what to send and the bounds.
        observe_pid: a server PID whose CPU use over the timed window is reported too.

    Returns:
        The aggregate over all processes.

    Raises:
        RuntimeError: a generator process failed or did not report within its bounds.
    """
    ctx = mp_context()
    results = ctx.Queue()
    go = ctx.Event()
    per_process = max(1, math.ceil(spec.max_requests / spec.processes))
    procs = [
        ctx.Process(  # type: ignore[attr-defined]
            target=generator_process,
            args=(spec, index, per_process, go, results),
            name=f"loadgen-{index}",
            daemon=True,
        )
        for index in range(spec.processes)
    ]
    for proc in procs:
        proc.start()
    try:
        _collect(results, "ready", spec.processes, time.monotonic() + READY_TIMEOUT_S)
        server_cpu = process_cpu_s(observe_pid) if observe_pid is not None else 0.0
        window_start = time.monotonic()
        go.set()
        deadline = time.monotonic() + spec.duration_s + _RESULT_GRACE_S
        payloads = _collect(results, "result", spec.processes, deadline)
        if observe_pid is not None:
            server_cpu = process_cpu_s(observe_pid) - server_cpu
        window_s = time.monotonic() - window_start
    finally:
        go.set()
        for proc in procs:
            proc.join(_JOIN_TIMEOUT_S)
            if proc.is_alive():
                proc.kill()
                proc.join(_JOIN_TIMEOUT_S)
        results.close()
    result = _aggregate(spec, payloads)
    if observe_pid is not None:
        # Over go -> results received: a little idle tail, so a slight underestimate.
        result.server_cpu_pct = 100 * server_cpu / max(window_s, 1e-9)
        result.server_us_per_request = 1e6 * server_cpu / max(result.completed, 1)
    return result


def _collect(results: Any, kind: str, count: int, deadline: float) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while len(got) < count:
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            msg = f"load generator: {len(got)}/{count} processes reported {kind!r} in time"
            raise RuntimeError(msg)
        try:
            what, index, payload = results.get(timeout=timeout)
        except queue.Empty:
            continue
        if what == "error":
            msg = f"load generator process {index} failed: {payload}"
            raise RuntimeError(msg)
        if what == kind:
            got.append(payload or {})
    return got


def _aggregate(spec: LoadSpec, payloads: list[dict[str, Any]]) -> LoadResult:
    latencies = array("d")
    statuses: Counter[int] = Counter()
    for payload in payloads:
        latencies.frombytes(payload["latencies"])
        statuses.update({int(k): v for k, v in payload["statuses"].items()})
    ordered = sorted(latencies)
    start = min(p["start"] for p in payloads)
    end = max(p["end"] for p in payloads)
    elapsed = max(end - start, 1e-9)
    completed = sum(p["completed"] for p in payloads)
    cpus = len(spec.cpus) if spec.cpus else (os.cpu_count() or 1)
    return LoadResult(
        mode=spec.mode,
        completed=completed,
        ok=sum(n for status, n in statuses.items() if 200 <= status < 300),
        errors=sum(p["errors"] for p in payloads),
        reconnects=sum(p["reconnects"] for p in payloads),
        resent=sum(p["resent"] for p in payloads),
        statuses=dict(sorted(statuses.items())),
        elapsed_s=elapsed,
        rate=completed / elapsed,
        p50_ms=_percentile(ordered, 0.50) * 1000,
        p99_ms=_percentile(ordered, 0.99) * 1000,
        generator_cpu_pct=100 * sum(p["cpu_s"] for p in payloads) / elapsed,
        generator_us_per_request=1e6 * sum(p["cpu_s"] for p in payloads) / max(completed, 1),
        generator_cpus=cpus,
        processes=spec.processes,
        connections=spec.processes * spec.connections,
        timed_out=not all(p["exhausted"] for p in payloads),
    )
