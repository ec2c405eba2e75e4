"""A frame-level HTTP/2 client for the receiver tests (the h2 library over a real TLS socket).

httpx sends a request body whole before it reads the answer, so it cannot show what happens
when a stream's answer arrives while its body is still being sent. This client opens
streams, sends DATA when told to, and reads frames until a condition holds, with a deadline.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

__all__ = ["H2Client", "StreamResult"]

_READ_BYTES = 65536
_POLL_S = 0.05


@dataclass
class StreamResult:
    """What the server sent on one stream."""

    status: int | None = None
    headers: dict[str, list[str]] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset_code: int | None = None

    @property
    def done(self) -> bool:
        return self.ended or self.reset_code is not None


class H2Client:
    """One HTTP/2 connection over mTLS to ``host:port``; every wait has a deadline."""

    def __init__(
        self, host: str, port: int, context: ssl.SSLContext, *, timeout_s: float = 10.0
    ) -> None:
        self.timeout_s = timeout_s
        raw = socket.create_connection((host, port), timeout=timeout_s)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.authority = f"{host}:{port}"
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.conn.initiate_connection()
        self.streams: dict[int, StreamResult] = {}
        self.terminated: h2.events.ConnectionTerminated | None = None
        self.eof = False  # the server closed or reset the TCP connection
        self._flush()

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            if not (self.eof or self.terminated):
                self.conn.close_connection()
                self._flush()
        except (OSError, h2.exceptions.ProtocolError):
            pass
        finally:
            self.sock.close()

    # -- sending ----------------------------------------------------------------------

    def start(
        self,
        path: str,
        headers: Sequence[tuple[str, str]] = (),
        *,
        method: str = "POST",
        body: bytes | None = None,
    ) -> int:
        """Open a stream; with ``body`` the request is sent whole, else left open for DATA."""
        stream_id = self.conn.get_next_available_stream_id()
        request = [
            (":method", method),
            (":scheme", "https"),
            (":authority", self.authority),
            (":path", path),
            *headers,
        ]
        self.conn.send_headers(stream_id, request)
        self.streams[stream_id] = StreamResult()
        self._flush()
        if body is not None:
            self.send_data(stream_id, body, end=True)
        return stream_id

    def send_data(self, stream_id: int, data: bytes, *, end: bool = False) -> bool:
        """Send ``data`` within the flow-control windows; False if the server reset the stream."""
        view = memoryview(data)
        deadline = time.monotonic() + self.timeout_s
        while True:
            if self.streams[stream_id].reset_code is not None:
                return False
            window = min(
                self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
            )
            if view and window <= 0:
                self._pump(deadline)
                continue
            chunk, view = view[:window], view[window:]
            try:
                self.conn.send_data(stream_id, bytes(chunk), end_stream=end and not view)
            except h2.exceptions.StreamClosedError:
                return False
            self._flush()
            if not view:
                return True

    def reset(self, stream_id: int) -> None:
        """Cancel a stream from the client side (RST_STREAM CANCEL)."""
        self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        self._flush()

    # -- receiving --------------------------------------------------------------------

    def wait(self, condition: Callable[[], bool], what: str) -> None:
        """Read frames until ``condition()`` holds; fail after the deadline or at EOF."""
        deadline = time.monotonic() + self.timeout_s
        while not condition():
            assert not self.eof, f"the server closed the connection while waiting for {what}"
            assert self.terminated is None, f"GOAWAY {self.terminated} while waiting for {what}"
            self._pump(deadline)

    def wait_done(self, *stream_ids: int) -> None:
        """Read until every stream in ``stream_ids`` has ended or been reset."""
        self.wait(lambda: all(self.streams[s].done for s in stream_ids), f"streams {stream_ids}")

    def _pump(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError("deadline passed waiting for the server")
        # A short read timeout, so that a condition set by another thread (a handler
        # starting) is seen soon: polling with a deadline.
        self.sock.settimeout(min(remaining, _POLL_S))
        try:
            data = self.sock.recv(_READ_BYTES)
        except TimeoutError:
            return
        except (ConnectionError, ssl.SSLError):
            data = b""
        if not data:
            self.eof = True
            return
        for event in self.conn.receive_data(data):
            self._on_event(event)
        self._flush()

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            result = self.streams[event.stream_id]
            for name, value in event.headers:
                result.headers.setdefault(str(name), []).append(str(value))
            result.status = int(result.headers[":status"][0])
        elif isinstance(event, h2.events.DataReceived):
            self.streams[event.stream_id].body += event.data
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.streams[event.stream_id].ended = True
        elif isinstance(event, h2.events.StreamReset):
            self.streams[event.stream_id].reset_code = int(event.error_code)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = event

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)
