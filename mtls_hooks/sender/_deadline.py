"""The sync sender's sockets: every blocking step ends by the current try's deadline.

httpx bounds each step of a request by its timeout: the connect, the TLS handshake, each write
and each read. A receiver sending its status line and headers a byte per read, each read quick,
held a sync caller for 124 s against an 8 s deadline (a hardening finding): no step was slow.
httpcore, under httpx, takes a network backend (its documented seam, encode/httpcore#699).
:class:`DeadlineBackend` wraps the standard sync backend so that each step waits at most what
is left of the try, and a step begun once the try's time is up raises ``TimeoutError`` at once:
what the body check (``_SenderBase._keep``) and the async twin's timeouts raise, retryable.

CPython bounds one blocking ``SSLSocket`` call (handshake, ``recv``, ``send`` of a whole
buffer: no partial writes) by its timeout as a whole, however the peer splits its TLS records,
so capping each call's timeout bounds the try. Name resolution is not a socket call:
``getaddrinfo`` runs unbounded, as the system resolver's own timeouts allow.

A try's end is per thread (``send_many`` runs tries on several threads over one pool), set by
the sender before each try. Over HTTP/1.1 a connection serves one request at a time; over
HTTP/2 a thread may read frames for another thread's stream under httpcore's lock, and does so
with its own try's end, as it already does with its own timeout.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any

import httpcore
import httpx

__all__ = ["DeadlineBackend", "deadline_transport"]


class _TryEnd(threading.local):
    # A reading of the sender's monotonic clock; None outside a try (no cap).
    up_at: float | None = None


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's sync backend, with each blocking step capped by the try's time left.

    Args:
        monotonic: the sender's monotonic clock, the one its tries' ends are read on.
    """

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._inner = httpcore.SyncBackend()
        self._monotonic = monotonic
        self.try_end = _TryEnd()

    def left(self, timeout: float | None) -> float | None:
        """The timeout for the next blocking step: ``timeout`` capped by the try's time left.

        Raises:
            TimeoutError: the current try's time is up.
        """
        up_at = self.try_end.up_at
        if up_at is None:
            return timeout
        left = up_at - self._monotonic()
        if left <= 0:
            raise TimeoutError("the try's time was up before the receiver's answer was whole")
        return left if timeout is None or left < timeout else timeout

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        """Connect as httpcore's sync backend does, within the try's time left."""
        stream = self._inner.connect_tcp(
            host, port, self.left(timeout), local_address, socket_options
        )
        return _DeadlineStream(stream, self)


class _DeadlineStream(httpcore.NetworkStream):
    """One connection's stream; each call's timeout is capped by :meth:`DeadlineBackend.left`."""

    def __init__(self, inner: httpcore.NetworkStream, backend: DeadlineBackend) -> None:
        self._inner = inner
        self._backend = backend
        self._left = backend.left

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if buffer:  # h11 ends a sized body with an empty write: no clock needed
            self._inner.write(buffer, self._left(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        tls = self._inner.start_tls(ssl_context, server_hostname, self._left(timeout))
        return _DeadlineStream(tls, self._backend)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def deadline_transport(
    backend: DeadlineBackend, *, ssl_context: ssl.SSLContext, http2: bool, limits: httpx.Limits
) -> httpx.HTTPTransport:
    """An ``httpx.HTTPTransport`` whose connection pool connects through ``backend``.

    httpx 0.28's transport takes no network backend (encode/httpx#3749, open), so the pool
    it builds is replaced by one with the same settings and ``backend``. The deadline tests
    (``tests/sender/test_deadline.py``) fail if an httpx upgrade stops using it.
    """
    transport = httpx.HTTPTransport(verify=ssl_context, http2=http2, limits=limits, trust_env=False)
    transport._pool = httpcore.ConnectionPool(  # private: see the docstring
        ssl_context=ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        http1=True,
        http2=http2,
        network_backend=backend,
    )
    return transport
