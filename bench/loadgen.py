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
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import multiprocessing
import os
import queue
import selectors
import socket
import ssl
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "KEEP_ALIVE",
    "NEW_HANDSHAKE",
    "LoadResult",
    "LoadSpec",
    "json_body",
    "mp_context",
    "parse_response",
    "process_cpu_s",
    "run_load",
]

Mode = Literal["keep-alive", "handshake"]
KEEP_ALIVE: Mode = "keep-alive"
NEW_HANDSHAKE: Mode = "handshake"

_RECV_BYTES = 65536
_READY_TIMEOUT_S = 60.0
_RESULT_GRACE_S = 30.0
_JOIN_TIMEOUT_S = 5.0
_PRELOAD = (
    "bench.loadgen",
    "bench._servers",
    "quart",
    "hypercorn.asyncio",
    "mtls_hooks._workers",
    "mtls_hooks._receiver",
)
# A server that refuses or resets every connection must not spin the loop forever.
_MAX_ERRORS_PER_PROCESS = 1000


def json_body(size: int = 1024) -> bytes:
    """A JSON webhook payload of exactly ``size`` bytes (the issue measures 1 KiB POSTs)."""
    head = b'{"type":"invoice.paid","data":{"id":"inv_1","note":"'
    tail = b'"}}'
    if size < len(head) + len(tail):
        msg = f"body size {size} is below the {len(head) + len(tail)}-byte JSON skeleton"
        raise ValueError(msg)
    return head + b"x" * (size - len(head) - len(tail)) + tail


@dataclass(frozen=True)
class LoadSpec:
    """What to send, where, and how hard.

    Attributes:
        port: server port on ``host``.
        ca_file: CA bundle that verifies the server certificate.
        cert_file: client certificate (chain) PEM presented to the server.
        key_file: its private key PEM.
        mode: ``KEEP_ALIVE`` or ``NEW_HANDSHAKE``.
        processes: generator processes.
        connections: concurrent connections per process (one request in flight each).
        max_requests: total requests over all processes (the count bound).
        duration_s: wall-time bound of the timed window.
        warmup_requests: untimed requests per connection before the clock starts
            (keep-alive mode).
        cpus: CPUs the generator processes are pinned to; ``None`` leaves them unpinned.
        signing_secret: a ``whsec_`` secret: every request then carries Standard Webhooks
            headers with a unique ``webhook-id``, all signed before the clock starts.
        body_bytes: size of the JSON body.
        host: IPv4 address to connect to.
        server_hostname: name checked against the server certificate (and sent as SNI).
        path: request target.
    """

    port: int
    ca_file: str
    cert_file: str
    key_file: str
    mode: Mode = KEEP_ALIVE
    processes: int = 2
    connections: int = 8
    max_requests: int = 20_000
    duration_s: float = 5.0
    warmup_requests: int = 5
    cpus: tuple[int, ...] | None = None
    signing_secret: str | None = None
    body_bytes: int = 1024
    host: str = "127.0.0.1"
    server_hostname: str = "localhost"
    path: str = "/"


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


# --------------------------------------------------------------------------- HTTP framing


def parse_response(buf: bytes | bytearray) -> tuple[int, int, bool] | None:
    """Find the end of the first HTTP/1.1 response in ``buf``.

    Only what a benchmark needs: the status line, ``Content-Length``, chunked framing and
    ``Connection: close``. A response without a length ends at EOF: ``end`` is then -1.

    Returns:
        ``(status, end, close)`` once the whole response is in ``buf``, else ``None``.

    Raises:
        ValueError: the bytes are not an HTTP/1.x response.
    """
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    lines = bytes(buf[:head_end]).split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        msg = f"not an HTTP/1.x status line: {lines[0][:80]!r}"
        raise ValueError(msg)
    status = int(parts[1])
    close = parts[0] == b"HTTP/1.0"
    length = -1
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            close = value.strip().lower() == b"close"
    body_start = head_end + 4
    if status < 200 or status in (204, 304):
        return status, body_start, close
    if chunked:
        end = _chunked_end(buf, body_start)
        return None if end is None else (status, end, close)
    if length >= 0:
        end = body_start + length
        return (status, end, close) if len(buf) >= end else None
    return status, -1, True


def _chunked_end(buf: bytes | bytearray, pos: int) -> int | None:
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buf[pos:line_end]).split(b";", 1)[0], 16)
        if size == 0:
            trailer_end = buf.find(b"\r\n\r\n", line_end)
            if trailer_end == line_end:
                return line_end + 4
            return None if trailer_end < 0 else trailer_end + 4
        pos = line_end + 2 + size + 2
        if len(buf) < pos:
            return None


def _build_requests(spec: LoadSpec, count: int) -> list[bytes]:
    body = json_body(spec.body_bytes)
    connection = b"close" if spec.mode == NEW_HANDSHAKE else b"keep-alive"
    head = (
        (
            f"POST {spec.path} HTTP/1.1\r\nHost: {spec.server_hostname}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        ).encode()
        + b"Connection: "
        + connection
        + b"\r\n"
    )
    if spec.signing_secret is None:
        return [head + b"\r\n" + body]
    from mtls_hooks._keys_signing import HmacSecret
    from mtls_hooks._signing import Signer

    signer = Signer([HmacSecret.parse(spec.signing_secret)])
    now = int(time.time())
    prefix = f"msg_{uuid.uuid4().hex[:12]}_"
    requests = []
    for index in range(count):
        # Unique ids: the receiver's dedupe must run its "first delivery" path every time.
        signed = signer.sign(body, webhook_id=f"{prefix}{index}", timestamp=now)
        extra = "".join(f"{name}: {value}\r\n" for name, value in signed.as_dict().items())
        requests.append(head + extra.encode() + b"\r\n" + body)
    return requests


# --------------------------------------------------------------------------- one process


class _Conn:
    """One connection slot: a socket and the request it has in flight."""

    __slots__ = ("events", "inbuf", "phase", "request", "sent", "sock", "started", "tls")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.tls: ssl.SSLSocket | None = None
        self.phase = "idle"
        self.request = b""
        self.sent = 0
        self.inbuf = bytearray()
        self.started = 0.0
        self.events = 0


class _Worker:
    """The selector loop of one generator process."""

    def __init__(self, spec: LoadSpec, budget: int, requests: list[bytes]) -> None:
        self.spec = spec
        self.budget = budget
        self.requests = requests
        self.next_request = 0
        self.ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=spec.ca_file)
        self.ctx.load_cert_chain(spec.cert_file, spec.key_file)
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.sel = selectors.DefaultSelector()
        self.latencies = array("d")
        self.statuses: Counter[int] = Counter()
        self.started = 0
        self.completed = 0
        self.errors = 0
        self.reconnects = 0
        self.resent = 0
        self.last_done = 0.0
        self.timing = False
        self.active = 0
        # Untimed requests left per connection during the warm-up.
        self.warm_left: dict[int, int] = {}

    # -- request supply ------------------------------------------------------------------

    def _take_request(self) -> bytes | None:
        if self.timing:
            if self.started >= self.budget:
                return None
            self.started += 1
        if len(self.requests) == 1:
            return self.requests[0]
        request = self.requests[self.next_request % len(self.requests)]
        self.next_request += 1
        return request

    # -- socket plumbing -----------------------------------------------------------------

    def _watch(self, conn: _Conn, events: int) -> None:
        sock = conn.tls or conn.sock
        assert sock is not None
        if conn.events == 0:
            self.sel.register(sock, events, conn)
        elif conn.events != events:
            self.sel.modify(sock, events, conn)
        conn.events = events

    def _close(self, conn: _Conn) -> None:
        sock = conn.tls or conn.sock
        if sock is not None:
            if conn.events:
                self.sel.unregister(sock)
            sock.close()
        conn.sock = conn.tls = None
        conn.events = 0
        conn.inbuf.clear()

    def _open(self, conn: _Conn) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conn.sock, conn.tls, conn.events = sock, None, 0
        code = sock.connect_ex((self.spec.host, self.spec.port))
        if code not in (0, errno.EINPROGRESS):
            raise OSError(code, os.strerror(code))
        conn.phase = "connect"
        self._watch(conn, selectors.EVENT_WRITE)

    def _begin(self, conn: _Conn, request: bytes, *, new_connection: bool) -> None:
        conn.request, conn.sent = request, 0
        conn.started = time.perf_counter()
        conn.inbuf.clear()
        if new_connection:
            self._open(conn)
        else:
            conn.phase = "send"
            self._advance(conn)

    def _next(self, conn: _Conn, *, reuse: bool) -> None:
        if not self.timing:
            self.warm_left[id(conn)] -= 1
            if self.warm_left[id(conn)] <= 0:
                # Warm: parked open until the clock starts (or closed, if the server said so).
                if not reuse:
                    self._close(conn)
                conn.phase = "warm"
                self.active -= 1
                return
        request = self._take_request()
        if request is None:
            self._close(conn)
            conn.phase = "idle"
            self.active -= 1
            return
        keep = reuse and self.spec.mode == KEEP_ALIVE
        if not keep:
            self._close(conn)
        self._begin(conn, request, new_connection=not keep)

    def _fail(self, conn: _Conn, *, resend: bool) -> None:
        """The connection broke; reopen it, resending the request if nothing came back."""
        self._close(conn)
        if resend:
            self.resent += 1
            self.reconnects += 1
            self._begin(conn, conn.request, new_connection=True)
            return
        self.errors += 1
        if self.errors > _MAX_ERRORS_PER_PROCESS:
            conn.phase = "idle"
            self.active -= 1
            return
        self._next(conn, reuse=False)

    # -- the state machine ---------------------------------------------------------------

    def _advance(self, conn: _Conn) -> None:
        try:
            if conn.phase == "connect":
                assert conn.sock is not None
                code = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, os.strerror(code))
                self.sel.unregister(conn.sock)
                conn.events = 0
                conn.tls = self.ctx.wrap_socket(
                    conn.sock,
                    server_hostname=self.spec.server_hostname,
                    do_handshake_on_connect=False,
                )
                conn.phase = "handshake"
            if conn.phase == "handshake":
                assert conn.tls is not None
                try:
                    conn.tls.do_handshake()
                except _WOULD_BLOCK as exc:
                    self._watch(conn, _wanted(exc))
                    return
                conn.phase = "send"
            tls = conn.tls
            assert tls is not None
            if conn.phase == "send":
                try:
                    while conn.sent < len(conn.request):
                        conn.sent += tls.send(memoryview(conn.request)[conn.sent :])
                except _WOULD_BLOCK as exc:
                    self._watch(conn, _wanted(exc))
                    return
                conn.phase = "recv"
            while conn.phase == "recv":
                try:
                    data = tls.recv(_RECV_BYTES)
                except ssl.SSLWantReadError:
                    self._watch(conn, selectors.EVENT_READ)
                    return
                if not data:
                    self._eof(conn)
                    return
                conn.inbuf += data
                parsed = parse_response(conn.inbuf)
                if parsed is None or parsed[1] < 0:
                    continue
                status, _end, close = parsed
                self._done(conn, status)
                if close:
                    self.reconnects += self.spec.mode == KEEP_ALIVE
                self._next(conn, reuse=not close)
                return
        except (OSError, ValueError) as exc:
            # SSLError is an OSError: a refused handshake, a reset, a broken pipe.
            nothing_back = not conn.inbuf and conn.phase in ("send", "recv")
            resend = nothing_back and self.spec.mode == KEEP_ALIVE and _is_closed(exc)
            self._fail(conn, resend=resend)

    def _eof(self, conn: _Conn) -> None:
        if conn.inbuf:
            parsed = parse_response(conn.inbuf)
            if parsed is not None:  # a body delimited by EOF
                self._done(conn, parsed[0])
                self._next(conn, reuse=False)
                return
            self._fail(conn, resend=False)
            return
        # Closed before answering: an idle keep-alive connection the server dropped.
        self._fail(conn, resend=self.spec.mode == KEEP_ALIVE)

    def _done(self, conn: _Conn, status: int) -> None:
        if not self.timing:
            return
        now = time.perf_counter()
        self.latencies.append(now - conn.started)
        self.statuses[status] += 1
        self.completed += 1
        self.last_done = time.monotonic()

    # -- phases ---------------------------------------------------------------------------

    def _loop(self, deadline: float) -> None:
        select = self.sel.select
        while self.active > 0:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                return
            for key, _mask in select(min(timeout, 0.2)):
                self._advance(key.data)

    def warm_up(self, conns: list[_Conn], deadline: float) -> None:
        """Open every keep-alive connection and run a few untimed requests on each."""
        if self.spec.mode != KEEP_ALIVE:
            return
        for conn in conns:
            self.warm_left[id(conn)] = self.spec.warmup_requests
            self.active += 1
            self._begin(conn, self._take_request() or b"", new_connection=True)
        self._loop(deadline)
        self.errors = self.reconnects = self.resent = 0

    def run(self, conns: list[_Conn], deadline: float) -> tuple[float, float]:
        """The timed window; returns (start monotonic, CPU seconds used)."""
        self.timing = True
        times = os.times()
        start = time.monotonic()
        for conn in conns:
            request = self._take_request()
            if request is None:
                break
            self.active += 1
            reuse = conn.phase == "warm" and conn.tls is not None
            self._begin(conn, request, new_connection=not reuse)
        self._loop(deadline)
        after = os.times()
        return start, (after.user - times.user) + (after.system - times.system)

    def close_all(self, conns: list[_Conn]) -> None:
        """Close every connection (after the timed window)."""
        for conn in conns:
            self._close(conn)


# Non-blocking TLS: each means "call again when the socket is readable/writable".
_WOULD_BLOCK = (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError)


def _wanted(exc: BaseException) -> int:
    return selectors.EVENT_READ if isinstance(exc, ssl.SSLWantReadError) else selectors.EVENT_WRITE


def _is_closed(exc: BaseException) -> bool:
    if isinstance(exc, ssl.SSLZeroReturnError | ssl.SSLEOFError):
        return True
    return isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError)


def _generator_process(
    spec: LoadSpec, index: int, budget: int, go: EventType, results: Any
) -> None:
    try:
        if spec.cpus:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, set(spec.cpus))
        warmups = spec.connections * spec.warmup_requests if spec.mode == KEEP_ALIVE else 0
        worker = _Worker(spec, budget, _build_requests(spec, budget + warmups))
        conns = [_Conn() for _ in range(spec.connections)]
        worker.warm_up(conns, time.monotonic() + _READY_TIMEOUT_S / 2)
        results.put(("ready", index, None))
        if not go.wait(_READY_TIMEOUT_S):
            return
        start, cpu_s = worker.run(conns, time.monotonic() + spec.duration_s)
        worker.close_all(conns)
        payload = {
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
        }
        results.put(("result", index, payload))
    except BaseException as exc:
        results.put(("error", index, f"{type(exc).__name__}: {exc}"))
        raise


# --------------------------------------------------------------------------- orchestration


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
            target=_generator_process,
            args=(spec, index, per_process, go, results),
            name=f"loadgen-{index}",
            daemon=True,
        )
        for index in range(spec.processes)
    ]
    for proc in procs:
        proc.start()
    try:
        _collect(results, "ready", spec.processes, time.monotonic() + _READY_TIMEOUT_S)
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
