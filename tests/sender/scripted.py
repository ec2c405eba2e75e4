"""A real TLS server on 127.0.0.1 that answers each request with the next scripted action.

It presents a certificate, requires a client certificate (the project's own
``create_server_context``) and speaks just enough HTTP/1.1, with keep-alive, to record what
the sender sent: headers, the exact body bytes and how many application bytes arrived at
all (``http_bytes``), so a test can prove that a refused handshake carried zero bytes of HTTP.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

__all__ = [
    "Recorded",
    "Reset",
    "ScriptedServer",
    "Stall",
    "Status",
    "Trickle",
    "scripted_server",
]


@dataclass(frozen=True)
class Status:
    """Answer with ``code``, ``headers`` and ``body``."""

    code: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class Reset:
    """Read the request, then reset the TCP connection (SO_LINGER 0: an RST, not a FIN)."""


@dataclass(frozen=True)
class Stall:
    """Read the request and never answer (until the server stops)."""


@dataclass(frozen=True)
class Trickle:
    """Answer ``code`` with a ``size``-byte body sent a byte at a time, ``interval_s`` apart.

    ``before_byte`` runs before each byte: a test advances its fake clock there, so the
    sender sees the body arriving slowly whatever the real pace.
    """

    code: int
    size: int
    before_byte: Callable[[], object] = lambda: None
    interval_s: float = 0.02
    slow_head: bool = False  # the status line and headers a byte at a time too


Action = Status | Reset | Stall | Trickle


@dataclass(frozen=True)
class Recorded:
    """One request as it arrived."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class ScriptedServer:
    """See the module docstring; use :func:`scripted_server`."""

    def __init__(self, context: ssl.SSLContext, script: list[Action]) -> None:
        self.context = context
        self.script = list(script)
        self.requests: list[Recorded] = []
        self.http_bytes = 0
        self.connections = 0
        self.handshake_errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]

    def url(self, path: str = "/hook") -> str:
        """The https URL of ``path`` on this server."""
        return f"https://127.0.0.1:{self.port}{path}"

    def _next_action(self) -> Action:
        with self._lock:
            return self.script.pop(0) if self.script else Status(200, body=b"ok")

    def serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._connection, args=(raw,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _connection(self, raw: socket.socket) -> None:
        raw.settimeout(5)
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.handshake_errors.append(str(exc))
            raw.close()
            return
        with self._lock:
            self.connections += 1
        with conn:
            buffer = b""
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except (ssl.SSLError, OSError):
                    return
                if not chunk:
                    return
                with self._lock:
                    self.http_bytes += len(chunk)
                buffer += chunk
                while b"\r\n\r\n" in buffer:
                    head, _, rest = buffer.partition(b"\r\n\r\n")
                    request_line, *lines = head.decode("latin-1").split("\r\n")
                    headers = {
                        k.strip().lower(): v.strip()
                        for k, _, v in (line.partition(":") for line in lines)
                    }
                    size = int(headers.get("content-length", "0"))
                    if len(rest) < size:
                        break
                    body, buffer = rest[:size], rest[size:]
                    method, path, _ = request_line.split(" ", 2)
                    with self._lock:
                        self.requests.append(Recorded(method, path, headers, body))
                    if not self._answer(conn, self._next_action()):
                        return

    def _answer(self, conn: ssl.SSLSocket, action: Action) -> bool:
        if isinstance(action, Reset):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if isinstance(action, Stall):
            self._stop.wait()
            return False
        if isinstance(action, Trickle):
            return self._trickle(conn, action)
        head = f"HTTP/1.1 {action.code} Scripted\r\ncontent-length: {len(action.body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in action.headers.items())
        try:
            conn.sendall(head.encode("latin-1") + b"\r\n")
            conn.sendall(action.body)  # not joined to the head: no copy of a large body
        except OSError:  # the sender stopped reading a large body and closed the connection
            return False
        return True

    def _trickle(self, conn: ssl.SSLSocket, action: Trickle) -> bool:
        head = f"HTTP/1.1 {action.code} Scripted\r\ncontent-length: {action.size}\r\n\r\n"
        slow = head.encode() if action.slow_head else b""
        try:
            if not action.slow_head:
                conn.sendall(head.encode())
            for byte in slow + b"x" * action.size:
                action.before_byte()
                conn.sendall(bytes([byte]))
                if self._stop.wait(action.interval_s):
                    return False
        except OSError:  # the sender gave up on the answer and closed the connection
            return False
        return True

    def start(self) -> None:
        self._acceptor = threading.Thread(target=self.serve, daemon=True)
        self._acceptor.start()

    def stop(self) -> None:
        """Stop accepting, then wait for every connection thread (idempotent)."""
        self._stop.set()
        self._listener.close()
        # The acceptor first: once it is gone no connection thread can still be starting.
        self._acceptor.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)


@contextlib.contextmanager
def scripted_server(context: ssl.SSLContext, script: list[Action]) -> Iterator[ScriptedServer]:
    """Run a :class:`ScriptedServer` in a thread for the ``with`` block."""
    server = ScriptedServer(context, script)
    server.start()
    try:
        yield server
    finally:
        server.stop()
