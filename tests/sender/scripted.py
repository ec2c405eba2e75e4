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
from typing import Literal

__all__ = [
    "Drip",
    "Dripped",
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
    """Read the request and send nothing for ``hold_s`` (or until the server stops), then close.

    Bounded: a sender whose timeout failed to fire sees the connection close (a transport
    error, not a timeout), so its test fails instead of hanging the suite.
    """

    hold_s: float = 60.0


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


@dataclass(frozen=True)
class Drip:
    """Answer 200 with an empty body, its status line and headers sent a byte at a time.

    The head is ``head_bytes`` long (an ``x-padding`` header fills it) and its bytes leave
    ``interval_s`` apart: each read of the sender's is quick, the answer takes
    ``head_bytes * interval_s``. ``before_byte`` runs before each byte, as in :class:`Trickle`.
    With ``hang_up_after``, the server closes the connection ``interval_s`` after that many
    bytes instead. The server records how far each drip got in :attr:`ScriptedServer.drips`.
    """

    head_bytes: int = 600
    interval_s: float = 0.1
    before_byte: Callable[[], object] = lambda: None
    hang_up_after: int | None = None

    def head(self) -> bytes:
        start = b"HTTP/1.1 200 Scripted\r\ncontent-length: 0\r\nx-padding: "
        padding = self.head_bytes - len(start) - len(b"\r\n\r\n")
        if padding < 1:
            raise ValueError(f"head_bytes must exceed {len(start) + 4}")
        return start + b"p" * padding + b"\r\n\r\n"


@dataclass(frozen=True)
class Dripped:
    """How far one trickled or dripped answer got before it ended, and why it ended."""

    sent_bytes: int
    total_bytes: int
    ended_by: Literal["done", "hang-up", "stop"]


Action = Status | Reset | Stall | Trickle | Drip


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
        self.drips: list[Dripped] = []  # every Trickle and Drip, in the order they ended
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
            self._stop.wait(action.hold_s)
            return False
        if isinstance(action, Trickle):
            return self._trickle(conn, action)
        if isinstance(action, Drip):
            dripped = action.head()[: action.hang_up_after]
            done = self._drip(conn, dripped, b"", action.before_byte, action.interval_s)
            return done and action.hang_up_after is None
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
        if action.slow_head:
            return self._drip(conn, head.encode() + b"x" * action.size, b"",
                              action.before_byte, action.interval_s)  # fmt: skip
        return self._drip(conn, b"x" * action.size, head.encode(), action.before_byte,
                          action.interval_s)  # fmt: skip

    def _drip(
        self,
        conn: ssl.SSLSocket,
        data: bytes,
        first: bytes,
        before_byte: Callable[[], object],
        interval_s: float,
    ) -> bool:
        """Send ``first`` at once, then ``data`` a byte per ``interval_s``; record the end."""
        sent = 0
        ended_by: Literal["done", "hang-up", "stop"] = "done"
        try:
            if first:
                conn.sendall(first)
            for byte in data:
                before_byte()
                conn.sendall(bytes([byte]))
                sent += 1
                if self._stop.wait(interval_s):
                    ended_by = "stop"
                    break
        except OSError:  # the sender gave up on the answer and closed the connection
            ended_by = "hang-up"
        with self._lock:
            self.drips.append(Dripped(sent, len(data), ended_by))
        return ended_by == "done"

    def start(self) -> None:
        self._acceptor = threading.Thread(target=self.serve, daemon=True)
        self._acceptor.start()

    def stop(self) -> None:
        """Stop accepting, then wait for every connection thread (idempotent)."""
        self._stop.set()
        with contextlib.suppress(OSError):  # already stopped
            # Wakes the acceptor's accept() at once on Linux, instead of at its next poll.
            self._listener.shutdown(socket.SHUT_RDWR)
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
