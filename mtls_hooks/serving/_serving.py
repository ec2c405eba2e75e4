"""Serving an ASGI app on Hypercorn over pinned mTLS, with the ASGI ``tls`` extension.

Hypercorn 0.18 offers neither client-certificate pinning nor the ASGI TLS extension
(pgjones/hypercorn#62, #324). Two seams close the gap (see ../shared/DESIGN.md):

* ``Config.create_ssl_context()`` (a supported override) returns our
  :class:`~mtls_hooks.core._tls.PinningContext`, whose ``sslobject_class`` refuses unpinned
  clients inside the handshake, before one HTTP byte is parsed;
* ``hypercorn.asyncio.run`` looks ``TCPServer`` up once per connection, so a subclass swapped
  in there sees ``writer.get_extra_info("ssl_object")`` and wraps the app so that every HTTP
  and WebSocket scope carries ``extensions["tls"]`` (ASGI TLS spec 0.2). This relies on
  internals: hypercorn is pinned to one minor series and
  ``tests/serving/test_tls_extension.py`` fails loudly if ``tls`` stops reaching the scope.

A refused handshake is answered with a TLS alert where TLS allows one (``access_denied`` for
an unpinned TLS 1.2 client, OpenSSL's own alerts for chain failures), with ``close_notify``
for an unpinned TLS 1.3 client, whose side of the handshake ended before the server checked
its certificate; it is counted, and logged with a bound per peer (``_refusals.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import socket
import ssl
import stat
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any
from wsgiref.handlers import format_date_time

import h11
import hypercorn.asyncio.run as hypercorn_run
import hypercorn.protocol as hypercorn_protocol
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol.events import Request
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import STREAM_ID as _H11_STREAM_ID
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import HTTPStream
from hypercorn.utils import wrap_app

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.core._problem import PROBLEM_CONTENT_TYPE, problem_body
from mtls_hooks.metrics._registry import current_metrics
from mtls_hooks.proxy._settings import UNIX_BIND_PREFIX
from mtls_hooks.serving._asgi_tls import tls_extension
from mtls_hooks.serving._config import ServerConfig, parse_bind
from mtls_hooks.serving._forwarded import ProxyMaterial, make_material
from mtls_hooks.serving._observe import expiry_alarm_task
from mtls_hooks.serving._refusals import format_addr as _format_addr
from mtls_hooks.serving._refusals import log_refusal
from mtls_hooks.serving._refusals import quote as _quote
from mtls_hooks.serving._reload import TLSMaterial
from mtls_hooks.serving._timers import IdleConnections, IdleTimer, SilenceWatch

__all__ = ["create_sockets", "log_refusal", "serve_async"]

refusal_logger = logging.getLogger("mtls_hooks.tls")
server_logger = logging.getLogger("mtls_hooks.serving")
_LISTEN_BACKLOG = 2048  # bursts of new handshakes must not overflow into SYN retries
_STRAGGLER_MARGIN_S = 1.0
_MAX_RECV = 2**16  # bytes per read, as hypercorn's own TCPServer


# --------------------------------------------------------------------------- tls in scope


class _MtlsHypercornConfig(HypercornConfig):
    """A hypercorn config whose TLS context is the reloadable, pinning one."""

    def __init__(
        self, material: TLSMaterial | ProxyMaterial, ready: Callable[[], None] | None
    ) -> None:
        super().__init__()
        self.material = material
        self._ready = ready
        self.silence_timeout_s: float | None = None
        self.idle = IdleConnections()
        self._date_at = -1
        self._date = b""
        # Open connections, so that shutdown can abort the ones that outlive
        # graceful_timeout (see _abort_stragglers).
        self.connections: weakref.WeakKeyDictionary[asyncio.StreamWriter, Any] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def ssl_enabled(self) -> bool:
        if self.material.listening_context is not None:
            return True
        # Plain HTTP behind a proxy: worker_serve reads this after lifespan startup, right
        # before serving, and never calls create_ssl_context: say "ready" here instead.
        self._say_ready()
        return False

    def _say_ready(self) -> None:
        ready, self._ready = self._ready, None
        if ready is not None:
            asyncio.get_running_loop().call_soon(ready)

    def response_headers(self, protocol: str) -> list[tuple[bytes, bytes]]:
        # Hypercorn formats the Date header for every response (wsgiref's format_date_time);
        # its value changes once a second. The server header is off, and there is no QUIC.
        if self.include_server_header or self.alt_svc_headers or not self.include_date_header:
            return super().response_headers(protocol)
        now = int(time.time())
        if now != self._date_at:
            self._date = format_date_time(now).encode("ascii")
            self._date_at = now
        return [(b"date", self._date)]

    def create_ssl_context(self) -> ssl.SSLContext:
        # worker_serve calls this after lifespan startup and right before start_server on
        # the (already listening) sockets: the right moment to say "ready".
        self._say_ready()
        context = self.material.listening_context
        if context is None:  # ssl_enabled said False: worker_serve never gets here
            raise ConfigurationError("plain HTTP listener has no TLS context")
        return context


class _TLSScopeApp:
    """Hypercorn AppWrapper adding this connection's ``tls`` extension to every scope.

    It also enforces ``max_header_bytes`` on HTTP/1.1: h11's ``max_incomplete_event_size``
    only limits a request head that arrives in pieces, and one that fits a single 64 KiB
    read would pass (HTTP/2 is limited by h2's SETTINGS_MAX_HEADER_LIST_SIZE).
    """

    __slots__ = ("_app", "_max_header_bytes", "_tls")

    def __init__(self, app: Any, tls: dict[str, Any], max_header_bytes: int) -> None:
        self._app = app
        self._tls = tls
        self._max_header_bytes = max_header_bytes

    async def __call__(
        self, scope: Any, receive: Any, send: Any, sync_spawn: Any, call_soon: Any
    ) -> None:
        if scope["type"] in ("http", "websocket"):
            header_bytes = sum(len(name) + len(value) for name, value in scope["headers"])
            if header_bytes > self._max_header_bytes:
                await _refuse_headers(scope, send, header_bytes, self._max_header_bytes)
                return
            # A fresh dict per request: nothing the app does leaks into another request.
            # Hypercorn builds the scope and its extensions per request: add to them.
            tls = {**self._tls, "client_cert_chain": list(self._tls["client_cert_chain"])}
            extensions = scope.get("extensions")
            if extensions is None:
                scope["extensions"] = extensions = {}
            extensions["tls"] = tls
        try:
            await self._app(scope, receive, send, sync_spawn, call_soon)
        except BaseException as exc:  # costs nothing until something is raised
            _log_unanswered(scope, send, exc)
            raise


def _log_unanswered(scope: Any, send: Any, exc: BaseException) -> None:
    """Log the 500 hypercorn sends for a request whose app ended before answering it.

    Hypercorn's ``HTTPStream`` answers 500 when the app's task ends while the stream is still
    in state ``REQUEST`` (``app_send(None)``): after an exception, which it logs as "Error in
    ASGI Framework", and after a cancellation (the connection's task group torn down, a
    shutdown past its grace period), which it does not log at all. ``send`` is that stream's
    bound ``app_send``; its state is read only on this path.
    """
    if scope["type"] != "http":
        return
    state = getattr(getattr(getattr(send, "__self__", None), "state", None), "name", None)
    if state != "REQUEST":  # the response had started: no 500 follows
        return
    server_logger.error(
        "event=server_error status=500 method=%s path=%s peer=%s reason=%s",
        scope.get("method"),
        json.dumps(str(scope.get("path", ""))[:256]),
        _format_addr(scope.get("client")),
        "cancelled" if isinstance(exc, asyncio.CancelledError) else type(exc).__name__,
    )


async def _refuse_headers(scope: Any, send: Any, size: int, limit: int) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1009})  # hypercorn answers 403
        return
    # RFC 6585 §5: 431 Request Header Fields Too Large.
    body = problem_body(
        431, detail=f"request headers are {size} bytes; the limit is {limit}", reason="headers"
    )
    await send(
        {
            "type": "http.response.start",
            "status": 431,
            "headers": [
                (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _AnsweredStream:
    """Stands in for an HTTP/2 stream that hypercorn has answered and forgotten."""

    __slots__ = ()

    async def handle(self, event: Any) -> None:
        """Drop the event: the answer is out, and the rest of the body is not wanted."""


_ANSWERED = _AnsweredStream()


class _Streams(dict[int, Any]):
    """``H2Protocol.streams``, where a stream id no longer held finds :data:`_ANSWERED`.

    RFC 9113 §8.1: a server may answer before the request is complete, and the client may go
    on sending its body. Hypercorn 0.18 forgets a stream once its answer is out, then looks
    it up by id for each later DATA frame; the ``KeyError`` (pgjones/hypercorn#329, fixes
    proposed in #334 and #365) ended the connection's task group, so every concurrent
    request on the connection was cancelled (answered 500, or left hanging on a send task
    cancelled first). With this mapping such DATA is discarded, and hypercorn still
    acknowledges it, so the connection's flow-control window is not lost with it. A dict
    subclass with only ``__missing__`` keeps the C lookup for the ids it holds.
    """

    __slots__ = ()

    def __missing__(self, stream_id: int) -> _AnsweredStream:
        return _ANSWERED


class _H2Protocol(H2Protocol):
    """Hypercorn's h2 protocol, with :class:`_Streams` on mtls-hooks connections only."""

    def __init__(self, app: Any, config: HypercornConfig, *args: Any) -> None:
        super().__init__(app, config, *args)
        if isinstance(config, _MtlsHypercornConfig):
            self.streams = _Streams()


class _H11Protocol(H11Protocol):
    """Hypercorn's h11 protocol, reading each request's header list once on our connections.

    For every request hypercorn walks h11's header sequence three times (the h2c and
    prior-knowledge checks, the WebSocket check, the scope's list), decoding, stripping and
    lower-casing each name twice: about a tenth of what hypercorn and h11 spend per
    keep-alive request. h11 hands names over lower-cased and validated as tokens (no
    whitespace), so those name checks compare bytes. Only a request with an ``upgrade``
    header (h2c, WebSocket) or the ``PRI`` method can take another path: those, and a
    config passing raw headers, go hypercorn's way.
    """

    _plain: tuple[h11.Request, list[tuple[bytes, bytes]]] | None = None

    async def _check_protocol(self, event: h11.Request) -> None:
        headers = _plain_headers(self.config, event)
        if headers is None:
            self._plain = None
            await super()._check_protocol(event)
            return
        self._plain = (event, headers)  # hypercorn's _create_stream(event) follows at once

    async def _create_stream(self, request: h11.Request) -> None:
        plain, self._plain = self._plain, None
        if plain is None or plain[0] is not request:
            await super()._create_stream(request)
            return
        self.stream = HTTPStream(
            self.app,
            self.config,
            self.context,
            self.task_group,
            self.ssl,
            self.client,
            self.server,
            self.stream_send,
            _H11_STREAM_ID,
        )
        await self.stream.handle(
            Request(
                stream_id=_H11_STREAM_ID,
                headers=plain[1],
                http_version=request.http_version.decode(),
                method=request.method.decode("ascii").upper(),
                raw_path=request.target,
                state=self.connection_state,
            )
        )
        self.keep_alive_requests += 1
        await self.context.mark_request()


def _plain_headers(
    config: HypercornConfig, request: h11.Request
) -> list[tuple[bytes, bytes]] | None:
    """The request's ``(name, value)`` list, as ``list(request.headers)``; ``None`` for an
    upgrade (h2c, WebSocket), HTTP/2 prior knowledge, or a connection not ours."""
    if not isinstance(config, _MtlsHypercornConfig) or config.h11_pass_raw_headers:
        return None
    if request.method == b"PRI":
        return None
    # h11's Headers keeps (raw name, lower-cased name, value) triples; its sequence interface
    # yields (name, value) one __getitem__ at a time. Read the triples when they are there.
    full: Any = getattr(request.headers, "_full_items", None)
    headers = (
        [(name, value) for _, name, value in full]
        if isinstance(full, list)
        else list(request.headers)
    )
    for name, _ in headers:
        if name == b"upgrade":
            return None
    return headers


_ORIGINAL_TCP_SERVER: Any = getattr(hypercorn_run, "TCPServer", None)


class _TLSTCPServer(_ORIGINAL_TCP_SERVER):  # type: ignore[misc]
    def __init__(  # noqa: PLR0917 - hypercorn's positional signature
        self,
        app: Any,
        loop: asyncio.AbstractEventLoop,
        config: HypercornConfig,
        context: Any,
        state: Any,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        # Other hypercorn servers in this process (a baseline, another app) stay stock.
        if isinstance(config, _MtlsHypercornConfig):
            ssl_object = writer.get_extra_info("ssl_object")
            if ssl_object is not None:
                metrics = current_metrics()
                if metrics is not None:
                    metrics.handshake("ok")
                pem = config.material.server_cert_pem(ssl_object.context)
                app = _TLSScopeApp(
                    app, tls_extension(ssl_object, pem), config.h11_max_incomplete_size
                )
            # The socket is read now: after hypercorn's second writer.close() the SSL
            # transport no longer answers get_extra_info().
            config.connections[writer] = writer.get_extra_info("socket")
        super().__init__(app, loop, config, context, state, reader, writer)
        self._queued_sends = 0  # sends on hypercorn's way (under its lock), queued or writing
        if isinstance(config, _MtlsHypercornConfig):
            self.idle_task = IdleTimer(self)

    async def protocol_send(self, event: Event) -> None:
        # Hypercorn takes an asyncio.Lock and awaits writer.drain() around every write, two
        # or three per response. An uncontended write whose transport buffered nothing
        # needs neither: no other write is waiting to go first (the lock is free), and
        # drain() would neither wait (nothing buffered, so not paused) nor raise (the
        # transport is open). Anything else goes hypercorn's way. h11 ends a response framed
        # by Content-Length with no bytes at all: nothing to write. Updated (twice per
        # request) does what hypercorn's protocol_send does, without its isinstance chain.
        if type(event) is Updated:
            if event.idle:
                await self.idle_task.restart(self._task_group, self._idle_timeout)
            else:
                await self.idle_task.stop()
            return
        if type(event) is RawData and self.writer.transport.is_closing():
            # A second close of asyncio's TLS transport drops its protocol: a write would
            # raise AttributeError, which neither path catches. The connection is over.
            await self.protocol.handle(Closed())
            return
        # Fast only while no write is queued either: a released lock is free for a moment
        # before its woken waiter runs, and a write slipping in then would reorder the
        # bytes (on HTTP/2, HEADERS after their DATA, or HPACK state out of step).
        if type(event) is RawData and not self._queued_sends and not self.send_lock.locked():
            if not event.data:
                return
            transport = self.writer.transport
            try:
                self.writer.write(event.data)
            except (ConnectionError, RuntimeError):
                await self.protocol.handle(Closed())
                return
            if not transport.is_closing() and not transport.get_write_buffer_size():
                return
            async with self.send_lock:
                try:
                    await self.writer.drain()
                except (ConnectionError, RuntimeError):
                    await self.protocol.handle(Closed())
            return
        self._queued_sends += 1
        try:
            await super().protocol_send(event)
        finally:
            self._queued_sends -= 1

    async def _read_data(self) -> None:
        await self._read_until_closed()
        # The peer is gone (EOF, reset, close_notify, or silent too long): no request can
        # follow, so the keep-alive timer has nothing left to time. Hypercorn 0.18 leaves it
        # running, and its task keeps the connection's task group open, so TCPServer.run,
        # the transport and asyncio's 256 KiB TLS read buffer (SSLProtocol.max_size) lived
        # on for keep_alive_timeout after every client that closed first: a load balancer's
        # health checks (handshake, close) held ~300 KiB each, 3,000 of them 800 MB
        # (issue 9; bench/bench_handshake_memory.py). Requests still running end as usual.
        if isinstance(self.idle_task, IdleTimer):
            await self.idle_task.close()

    async def _read_until_closed(self) -> None:
        config = self.config
        if not isinstance(config, _MtlsHypercornConfig) or config.silence_timeout_s is None:
            await super()._read_data()
            return
        # A connection silent for silence_timeout_s is aborted; the read then ends and the
        # base loop closes the connection as it does at EOF. One lazily re-armed timer per
        # connection (_timers.SilenceWatch), where hypercorn's read_timeout builds a task
        # per read.
        watch = SilenceWatch(self.loop, config.silence_timeout_s, self.writer.transport.abort)
        reader = self.reader
        try:
            while not reader.at_eof():
                watch.reading()
                try:
                    data = await reader.read(_MAX_RECV)
                except (ConnectionError, OSError, ssl.SSLError):
                    break
                finally:
                    watch.received()
                await self.protocol.handle(RawData(data))
        finally:
            watch.cancel()
        await self.protocol.handle(Closed())

    async def _close(self) -> None:
        # hypercorn 0.18's TCPServer._close swallows the OSErrors of a broken close but not
        # ssl.SSLError, which asyncio raises from wait_closed() when the TLS close exchange
        # goes wrong (APPLICATION_DATA_AFTER_CLOSE_NOTIFY from a client still sending as the
        # straggler shutdown closes its socket). The connection is gone either way; letting
        # the error escape failed the whole worker_serve() at shutdown.
        try:
            await super()._close()
        except ssl.SSLError as exc:
            refusal_logger.debug("event=close_failed detail=%s", _quote(str(exc)))
        # This server object lives on in reference cycles (its protocol holds its bound
        # protocol_send) until the garbage collector's oldest generation runs, and through
        # writer.transport it held asyncio's SSLProtocol and its 256 KiB read buffer. A TLS
        # transport's second close() drops that reference; hypercorn makes one only when the
        # peer's close came first (issue 9: a health check left ~40 KiB of RSS per connection
        # when the keep-alive timer no longer delayed this close by a few loop turns).
        transport = self.writer.transport
        if transport.is_closing():
            transport.close()


_patch_lock = threading.Lock()
_patch_users = 0


@contextlib.contextmanager
def _tls_scope_patch() -> Iterator[None]:
    """Swap hypercorn's TCPServer for ours while at least one mTLS server runs."""
    global _patch_users  # noqa: PLW0603 - one process-wide patch, reference-counted
    if _ORIGINAL_TCP_SERVER is None:
        raise ConfigurationError(
            "this hypercorn has no hypercorn.asyncio.run.TCPServer; mtls-hooks supports 0.18.x"
        )
    with _patch_lock:
        if _patch_users == 0:
            setattr(hypercorn_run, "TCPServer", _TLSTCPServer)  # noqa: B010
            # ProtocolWrapper looks H2Protocol up here, for ALPN h2 and for a prior-knowledge
            # preface on an http/1.1 connection alike.
            setattr(hypercorn_protocol, "H2Protocol", _H2Protocol)  # noqa: B010
            setattr(hypercorn_protocol, "H11Protocol", _H11Protocol)  # noqa: B010
        _patch_users += 1
    try:
        yield
    finally:
        with _patch_lock:
            _patch_users -= 1
            if _patch_users == 0:
                setattr(hypercorn_run, "TCPServer", _ORIGINAL_TCP_SERVER)  # noqa: B010
                setattr(hypercorn_protocol, "H2Protocol", H2Protocol)  # noqa: B010
                setattr(hypercorn_protocol, "H11Protocol", H11Protocol)  # noqa: B010


# --------------------------------------------------------------------------- serving


def create_sockets(config: ServerConfig) -> list[socket.socket]:
    """Bind and listen on every ``config.bind`` address (SO_REUSEADDR, IPv6-only for v6).

    Raises:
        ConfigurationError: if an address cannot be bound.
    """
    sockets: list[socket.socket] = []
    try:
        for bind in config.bind:
            if bind.startswith(UNIX_BIND_PREFIX):
                sockets.append(_unix_socket(bind))
                continue
            host, port = parse_bind(bind)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            try:
                sock = socket.create_server(
                    (host, port), family=family, backlog=_LISTEN_BACKLOG, reuse_port=False
                )
            except OSError as exc:
                raise ConfigurationError(f"cannot bind {bind}: {exc.strerror}") from exc
            sock.setblocking(False)
            sockets.append(sock)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _unix_socket(bind: str) -> socket.socket:
    """Listen on ``unix:/path``; a stale socket file (not any other file) is replaced.

    Raises:
        ConfigurationError: if the path cannot be bound.
    """
    path = bind[len(UNIX_BIND_PREFIX) :]
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(_LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot bind {bind}: {exc.strerror}") from exc
    sock.setblocking(False)
    return sock


def _no_delay(sock: socket.socket) -> None:
    """Turn Nagle off on a listening socket; the connections it accepts inherit it (Linux).

    asyncio sets TCP_NODELAY on accepted sockets only when ``sock.proto == IPPROTO_TCP``, and
    ``socket.create_server`` leaves ``proto`` 0: without this, an answer written in two
    pieces (headers, then body) waited ~40 ms for the peer's delayed ACK.
    """
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _hypercorn_config(
    config: ServerConfig, material: TLSMaterial | ProxyMaterial, ready: Callable[[], None] | None
) -> _MtlsHypercornConfig:
    hc = _MtlsHypercornConfig(material, ready)
    hc.bind = list(config.bind)
    hc.insecure_bind = []
    hc.quic_bind = []  # HTTP/3 ignores client certificates
    hc.alpn_protocols = ["h2", "http/1.1"]
    hc.backlog = _LISTEN_BACKLOG
    hc.workers = 1  # per process; the supervisor runs the others
    hc.ssl_handshake_timeout = config.handshake_timeout_s
    hc.keep_alive_timeout = config.keep_alive_timeout_s
    # Not hypercorn's read_timeout: it wraps every read in asyncio.wait_for (a task per
    # read, ~25 % of a keep-alive request's CPU on 3.11). _TLSTCPServer keeps one timer.
    hc.read_timeout = None
    hc.silence_timeout_s = config.read_timeout_s
    hc.keep_alive_max_requests = config.keep_alive_max_requests
    hc.h11_max_incomplete_size = config.max_header_bytes
    hc.h2_max_header_list_size = config.max_header_bytes
    # hypercorn cancels what is left after its graceful_timeout; we shut the sockets of the
    # stragglers down first (_abort_stragglers), so connection tasks end by EOF, not by a
    # cancellation that Python 3.11's start_server callback reports as an error.
    hc.graceful_timeout = config.graceful_timeout_s + _STRAGGLER_MARGIN_S
    hc.accesslog = None
    # A Logger object is used as is: hypercorn then adds no handler of its own.
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.loglevel = config.log_level
    hc.include_server_header = False
    return hc


def _abort_stragglers(hc: _MtlsHypercornConfig) -> None:
    # Runs graceful_timeout_s after the shutdown trigger. Without it hypercorn cancels
    # connection tasks after its graceful_timeout, but TCPServer._close
    # swallows the CancelledError while awaiting the TLS close_notify exchange, which waits
    # up to asyncio's 30 s ssl_shutdown_timeout for a peer that may never answer (and its
    # second writer.close() detaches the transport, so abort() is a no-op). Shutting the
    # socket down makes the read side see EOF, which completes the TLS shutdown at once:
    # shutdown is bounded by graceful_timeout.
    for sock in list(hc.connections.values()):
        if sock is not None:
            with contextlib.suppress(OSError):
                _shutdown_socket(sock)


def _shutdown_socket(sock: Any) -> None:
    if isinstance(sock, socket.socket):
        sock.shutdown(socket.SHUT_RDWR)
        return
    # uvloop's transport sockets (PseudoSocket) refuse shutdown() with a TypeError: borrow
    # the descriptor in a socket object, shut it down, and give it back without closing it.
    fd = sock.fileno()
    if fd < 0:  # the connection is already closed
        return
    borrowed = socket.socket(sock.family, sock.type, sock.proto, fileno=fd)
    try:
        borrowed.shutdown(socket.SHUT_RDWR)
    finally:
        borrowed.detach()


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _config_in_force(material: TLSMaterial | ProxyMaterial) -> ServerConfig:
    """The configuration of the material serving now (a reload may have replaced it)."""
    return material.config if isinstance(material, ProxyMaterial) else material.current.config


async def serve_async(
    app: Any,
    config: ServerConfig,
    *,
    shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
    sockets: Sequence[socket.socket] | None = None,
    ready: Callable[[], None] | None = None,
    material: TLSMaterial | ProxyMaterial | None = None,
    expiry_alarm: bool = True,
) -> None:
    """Serve ``app`` in the running event loop until ``shutdown_trigger`` returns.

    Args:
        app: an ASGI application (a Quart app, or any ASGI 3 callable).
        config: the server configuration; ``config.workers`` is ignored here (one process).
        shutdown_trigger: awaited; when it returns the server shuts down gracefully.
            Without it, SIGINT/SIGTERM stop the server when running in the main thread.
        sockets: listening sockets to serve on instead of binding ``config.bind``; they
            are closed when serving ends.
        ready: called once the server accepts connections.
        material: pre-built TLS material (to call :meth:`TLSMaterial.reload` from outside).
        expiry_alarm: check certificate and CRL expiry at start-up and daily, logging what
            is close (one process of several runs it, so each warning is logged once).

    Raises:
        ConfigurationError: invalid certificate, key, CA, CRL or pins; unbindable address.
    """
    loop = asyncio.get_running_loop()
    if material is None:
        material = make_material(config, on_refusal=log_refusal)
    if isinstance(material, ProxyMaterial):
        app = material.wrap(app)  # proxy mode: forwarded certificates, re-verified
    listening = list(sockets) if sockets is not None else create_sockets(config)
    for sock in listening:
        _no_delay(sock)
    cleanups: list[Callable[[], Any]] = []
    stop_watching = asyncio.Event()
    watcher: asyncio.Task[None] | None = None
    timers: list[asyncio.TimerHandle] = []
    hc: _MtlsHypercornConfig | None = None
    try:
        if _in_main_thread():
            cleanups.append(material.install_signal_handler(loop))
        if shutdown_trigger is None:
            stop = asyncio.Event()
            if _in_main_thread():
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(signum, stop.set)
                    cleanups.append(functools.partial(loop.remove_signal_handler, signum))
            shutdown_trigger = stop.wait
        if config.watch_files:
            watcher = loop.create_task(material.watch(stop_watching))
        if expiry_alarm:
            alarm = expiry_alarm_task(functools.partial(_config_in_force, material))
            cleanups.append(alarm.cancel)
        hc = _hypercorn_config(config, material, ready)
        trigger = shutdown_trigger

        async def _bounded_shutdown_trigger() -> None:
            await trigger()
            timers.append(loop.call_later(config.graceful_timeout_s, _abort_stragglers, hc))

        with _tls_scope_patch():
            await hypercorn_run.worker_serve(
                wrap_app(app, hc.wsgi_max_body_size, "asgi"),
                hc,
                sockets=(
                    Sockets(listening, [], [])
                    if material.listening_context is not None
                    else Sockets([], listening, [])
                ),
                shutdown_trigger=_bounded_shutdown_trigger,
            )
    finally:
        if hc is not None:
            hc.idle.stop()
        for timer in timers:
            timer.cancel()
        stop_watching.set()
        if watcher is not None:
            await watcher
        for cleanup in reversed(cleanups):
            cleanup()
        for sock in listening:
            sock.close()
