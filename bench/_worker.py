"""One load-generator process: a ``selectors`` loop over non-blocking TLS sockets.

Each connection slot keeps one request in flight: connect, handshake, send, read the response,
then the next request on the same connection (keep-alive) or on a new one (handshake mode,
or when the server closed it). No asyncio and no HTTP library: per request the generator must
cost far less than the server it measures (see ``LoadResult.generator_us_per_request``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import ssl
import time
import uuid
from array import array
from collections import Counter
from dataclasses import dataclass
from multiprocessing.synchronize import Event as EventType
from typing import Any, Literal

from bench._http import json_body, parse_response

__all__ = [
    "KEEP_ALIVE",
    "NEW_HANDSHAKE",
    "READY_TIMEOUT_S",
    "LoadSpec",
    "Mode",
    "generator_process",
]

Mode = Literal["keep-alive", "handshake"]
KEEP_ALIVE: Mode = "keep-alive"
NEW_HANDSHAKE: Mode = "handshake"

READY_TIMEOUT_S = 60.0
_RECV_BYTES = 65536
# A server that refuses or resets every connection must not spin the loop forever.
_MAX_ERRORS_PER_PROCESS = 1000


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
    from mtls_hooks.core._keys_signing import HmacSecret
    from mtls_hooks.core._signing import Signer

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


def generator_process(spec: LoadSpec, index: int, budget: int, go: EventType, results: Any) -> None:
    try:
        if spec.cpus:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, set(spec.cpus))
        warmups = spec.connections * spec.warmup_requests if spec.mode == KEEP_ALIVE else 0
        worker = _Worker(spec, budget, _build_requests(spec, budget + warmups))
        conns = [_Conn() for _ in range(spec.connections)]
        worker.warm_up(conns, time.monotonic() + READY_TIMEOUT_S / 2)
        results.put(("ready", index, None))
        if not go.wait(READY_TIMEOUT_S):
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
