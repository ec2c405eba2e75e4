"""Refused handshakes: the alert the client reads, a count per reason, and a bounded log.

Every handshake the server refuses (OpenSSL's chain check, or our pins in
:mod:`mtls_hooks.core._tls`) reaches :class:`RefusalLog`, the contexts' ``on_refusal`` hook,
in the middle of asyncio's ``SSLProtocol._do_handshake``. It does three things there:

1. **The alert.** Python 3.11's asyncio closes a failed handshake without writing what
   OpenSSL left in the outgoing BIO (``SSLProtocol._on_handshake_complete`` goes straight to
   ``_fatal_error``), so even OpenSSL's own alert (``unknown_ca``, ``certificate_required``)
   was lost and every refused client saw an unexpected EOF. The hook writes those pending
   bytes to the socket first: OpenSSL's alert, or the one ``core._tls._refuse`` queued for a
   pin refusal (``access_denied`` under TLS 1.2, ``close_notify`` under TLS 1.3).
2. **Memory.** asyncio's handshake error path leaves the ``SSLProtocol`` in a reference cycle
   (the exception's traceback holds the frame that holds the exception), freed only by the
   cyclic garbage collector; the protocol's 256 KiB read buffer is released here at once.
3. **Counting and logging.** Every refusal is counted per reason (:attr:`RefusalLog.counts`,
   for the metrics). Lines are bounded: the first ``lines_per_window`` refusals per (listener,
   peer host, reason) in a ``window_s`` window are logged in full; the rest are summed into
   one ``event=handshake_refused_summary`` line when the window ends ("N more refusals from …
   in the last 60 s"). An unpinned flood wrote 23,398 lines a minute before (issue 9).

The SSLProtocol is found by walking a few frames up from the hook: there is no public way
from an ``SSLObject`` to its transport. Under another driver (uvloop, a blocking socket) the
walk finds nothing: refusals are still counted and logged, and a blocking socket has had
OpenSSL's own alert written by OpenSSL.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import logging
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mtls_hooks.core._tls import HandshakeRefusal
from mtls_hooks.metrics._registry import current_metrics

__all__ = ["RefusalLog", "format_addr", "log_refusal", "quote"]

refusal_logger = logging.getLogger("mtls_hooks.tls")
_FRAMES_UP = 12
_OTHER_PEERS = "*"  # the key of every peer beyond max_peers, so the table stays bounded


def format_addr(addr: Any) -> str:
    """``host:port`` (``[v6]:port``) for a socket address; ``unknown`` for None."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return "unknown" if addr is None else str(addr)


def quote(value: str) -> str:
    """A log field value in double quotes, with quotes, backslashes and newlines escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def _handshake_protocol(depth: int) -> asyncio.sslproto.SSLProtocol | None:
    # SSLProtocol._do_handshake -> SSLObject.do_handshake -> core._tls hooks -> here.
    frame = sys._getframe(depth)
    for _ in range(_FRAMES_UP):
        owner = frame.f_locals.get("self")
        if isinstance(owner, asyncio.sslproto.SSLProtocol):
            return owner
        if frame.f_back is None:
            break
        frame = frame.f_back
    return None


def _send_pending(protocol: asyncio.sslproto.SSLProtocol) -> None:
    # The selector transport sends at once on an idle socket: the alert is out before asyncio's
    # _force_close drops the transport's buffer.
    transport: Any = protocol._transport
    data = protocol._outgoing.read()  # type: ignore[attr-defined]
    if data and transport is not None and not transport.is_closing():
        with contextlib.suppress(OSError, RuntimeError):
            transport.write(data)


def _drop_traceback(waiter: asyncio.Future[Any]) -> None:
    """Free a refused connection now instead of at the next cyclic garbage collection.

    The handshake's exception reaches the accepting task (``_accept_connection2``) through
    this waiter, and its traceback then holds that task's finished frame, whose ``waiter``
    holds the exception: a cycle. Through the frames' ``f_back`` chain it also holds the
    SSLProtocol, the transport and the 256 KiB memoryview asyncio reads into, ~300 KiB per
    refused handshake, until the collector's oldest generation runs (measured: RSS up by
    ~40 MB before it did, in bench/bench_handshake_memory.py). Done callbacks run in the
    order they were added, so the task has handled the exception when this runs; nothing
    reads the traceback after that (asyncio logs it only in debug mode, before this).
    """
    if not waiter.cancelled() and (exc := waiter.exception()) is not None:
        exc.__traceback__ = None


@dataclass
class _Window:
    start_s: float
    logged: int = 0
    suppressed: int = 0


class RefusalLog:
    """The ``on_refusal`` hook of a server: alert, count, and a log bounded per peer.

    Args:
        lines_per_window: refusals logged in full per (listener, peer host, reason) and window.
        window_s: the window, in seconds; its summary line is written when it ends.
        max_peers: (listener, peer, reason) keys tracked at once; beyond it, peers are
            summed under ``peer=*``, so a flood from many addresses stays bounded too.
        clock: monotonic seconds (injectable for tests).
        logger: where lines go (``mtls_hooks.tls``).

    Attributes:
        counts: refused handshakes per reason (``unpinned``, ``cert-verify-failed``, …) since
            this object was made, every one, logged or summarised.
    """

    def __init__(
        self,
        *,
        lines_per_window: int = 10,
        window_s: float = 60.0,
        max_peers: int = 1024,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = refusal_logger,
    ) -> None:
        self.lines_per_window = lines_per_window
        self.window_s = window_s
        self.max_peers = max_peers
        self.counts: dict[str, int] = {}
        self._clock = clock
        self._logger = logger
        self._windows: dict[tuple[str, str, str], _Window] = {}
        self._timer: tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle] | None = None
        # The process-wide instance serves every server of the process, threads included.
        self._lock = threading.Lock()

    def __call__(self, conn: ssl.SSLObject | ssl.SSLSocket, refusal: HandshakeRefusal) -> None:
        """Handle one refused handshake (the ``PinningContext.on_refusal`` signature)."""
        protocol = _handshake_protocol(1)
        peer: Any = None
        listener: Any = None
        transport: Any = protocol._transport if protocol is not None else None
        if transport is not None:
            peer = transport.get_extra_info("peername")
            listener = transport.get_extra_info("sockname")
        elif isinstance(conn, ssl.SSLSocket):
            with contextlib.suppress(OSError):
                peer, listener = conn.getpeername(), conn.getsockname()
        # Counted and logged before the alert goes out: a client that has read its alert
        # finds its refusal already in the log and the counts.
        self.record(refusal, peer=peer, listener=listener)
        if protocol is not None:
            _send_pending(protocol)
            waiter: asyncio.Future[Any] | None = getattr(protocol, "_waiter", None)
            if waiter is not None and not waiter.done():
                waiter.add_done_callback(_drop_traceback)

    def record(self, refusal: HandshakeRefusal, *, peer: Any = None, listener: Any = None) -> None:
        """Count one refusal, and log it unless its window's lines are used up.

        Args:
            refusal: what was refused and why.
            peer: the client's socket address (``(host, port, ...)``), if known.
            listener: the server's socket address the client reached, if known.
        """
        with self._lock:
            self._record(refusal, peer, listener)
        metrics = current_metrics()
        if metrics is not None:
            metrics.handshake("refused", refusal.reason)

    def _record(self, refusal: HandshakeRefusal, peer: Any, listener: Any) -> None:
        self.counts[refusal.reason] = self.counts.get(refusal.reason, 0) + 1
        now = self._clock()
        host = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        key = (format_addr(listener), host, refusal.reason)
        window = self._windows.get(key)
        if window is not None and now - window.start_s >= self.window_s:
            self._summarise(key, window)
            window = None
        if window is None:
            if len(self._windows) >= self.max_peers:
                self._flush(now)  # drop the windows that ended
            if len(self._windows) >= self.max_peers:
                key = (key[0], _OTHER_PEERS, key[2])
                window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = _Window(now)
        if window.logged < self.lines_per_window:
            window.logged += 1
            self._log(peer, refusal)
        else:
            window.suppressed += 1
            self._schedule(window.start_s + self.window_s - now)

    def flush(self) -> None:
        """Write the summary of every window that has ended, and forget those windows."""
        with self._lock:
            self._flush(self._clock())

    def _flush(self, now: float) -> None:
        for key, window in list(self._windows.items()):
            if now - window.start_s >= self.window_s:
                self._summarise(key, window)
        pending = [w.start_s + self.window_s - now for w in self._windows.values() if w.suppressed]
        if pending:
            self._schedule(min(pending))

    def _summarise(self, key: tuple[str, str, str], window: _Window) -> None:
        del self._windows[key]
        if window.suppressed:
            listener, host, reason = key
            self._logger.warning(
                "event=handshake_refused_summary peer=%s reason=%s more=%d window_s=%g "
                "listener=%s detail=%s",
                host,
                reason,
                window.suppressed,
                self.window_s,
                listener,
                quote(
                    f"{window.suppressed} more refusals from {host} in the last "
                    f"{self.window_s:g} s ({reason})"
                ),
            )

    def _schedule(self, delay_s: float) -> None:
        # One timer at a time, so the last window of a flood that stopped is summarised too.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a blocking server, a test): flush() is called instead
            return
        if self._timer is not None and self._timer[0] is loop and not loop.is_closed():
            return
        self._timer = (loop, loop.call_later(max(delay_s, 0.0), self._on_timer))

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()

    def _log(self, peer: Any, refusal: HandshakeRefusal) -> None:
        identity = refusal.identity
        self._logger.warning(
            "event=handshake_refused peer=%s reason=%s subject=%s spki=%s detail=%s",
            format_addr(peer),
            refusal.reason,
            quote(identity.subject) if identity else "-",
            identity.spki_pin if identity else "-",
            quote(refusal.detail),
        )


#: The hook every server of this process uses unless given another: one count per process,
#: which is what a metrics exporter reads (``log_refusal.counts``).
log_refusal = RefusalLog()
