"""A connection's two timers, each one loop timer re-armed lazily: no task, no timer per request.

* :class:`IdleTimer`, the keep-alive timer: a connection idle (no request in progress) for
  ``keep_alive_timeout`` is closed, and every idle connection is closed at once when the
  server stops (:class:`IdleConnections`).
* :class:`SilenceWatch`, the read timeout: a connection whose read has waited
  ``read_timeout_s`` for a byte is aborted.

Hypercorn 0.18 restarts its keep-alive timer each time a connection falls idle and stops it
each time a request arrives: an ``asyncio.Lock``, a task running ``TCPServer._idle_timeout``
(whose ``asyncio.wait_for`` makes a second task and a timer), then the cancellation and an
await of both, twice per keep-alive request (its ``read_timeout`` likewise wraps every read in
``asyncio.wait_for``). Here each timer is a single ``TimerHandle`` per connection, armed when
its period starts and nothing is armed yet; a request or a read only notes the time it began
or ended (``loop.time()`` and an attribute). When the handle fires it checks the current
period: due, it acts; not due yet, it re-arms for the period's end; no period running, it
stays unarmed until the next one starts. The deadlines are exactly those of a timer started
with each period.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["IdleConnections", "IdleTimer", "SilenceWatch"]


class IdleConnections:
    """The keep-alive timers of one server's idle connections, fired at once when it stops.

    Hypercorn's idle task waits for ``keep_alive_timeout`` *or* the worker's ``terminated``
    event, so a shutdown closes idle keep-alive connections at once. Here one task per server
    waits for ``terminated`` and fires the timers of the connections idle then; a connection
    falling idle later finds the event set.
    """

    __slots__ = ("timers", "watcher")

    def __init__(self) -> None:
        self.timers: set[IdleTimer] = set()
        self.watcher: asyncio.Task[None] | None = None

    def watch(self, context: Any) -> None:
        """Start waiting for ``context.terminated`` (once per server)."""
        if self.watcher is None:
            self.watcher = asyncio.get_running_loop().create_task(self._fire_at_end(context))

    async def _fire_at_end(self, context: Any) -> None:
        await context.terminated.wait()
        for timer in list(self.timers):
            timer.expire()

    def stop(self) -> None:
        """Stop waiting (the server is done)."""
        if self.watcher is not None:
            self.watcher.cancel()


class IdleTimer:
    """A connection's keep-alive timer: hypercorn's ``idle_task`` (``restart``/``stop``).

    When it is due (or the server stops, see :class:`IdleConnections`) the connection is
    closed as hypercorn's ``_idle_timeout`` ends: by ``TCPServer._initiate_server_close()``,
    in a task of the connection's task group. A group that takes no more tasks belongs to a
    connection being torn down, which needs no closing: the coroutine is closed unawaited and
    the caller carries on. (Hypercorn's own timer left a never-awaited coroutine there before
    Python 3.13, python/cpython#115957, pgjones/hypercorn#338: a RuntimeWarning at some later
    garbage collection, which ``filterwarnings = error`` turned into the failure of an
    unrelated test.)
    """

    __slots__ = (
        "_closed",
        "_config",
        "_context",
        "_group",
        "_handle",
        "_idle_since",
        "_loop",
        "_server",
    )

    def __init__(self, server: Any) -> None:
        # The server weakly: it holds this timer, and the armed handle holds this timer.
        self._server = weakref.ref(server)
        self._config = server.config  # keep_alive_timeout, and .idle: IdleConnections
        self._context = server.context
        self._loop: asyncio.AbstractEventLoop = server.loop
        self._handle: asyncio.TimerHandle | None = None
        self._group: Any = None
        self._idle_since: float | None = None
        self._closed = False

    async def restart(self, task_group: Any, action: Any) -> None:
        """The connection fell idle: close it after ``keep_alive_timeout`` unless a request
        comes (``action``, hypercorn's ``_idle_timeout``, is not needed: see the module)."""
        if self._closed:  # the peer is gone: nothing left to time (see close)
            return
        self._group = task_group
        idle: IdleConnections = self._config.idle
        idle.watch(self._context)
        if self._context.terminated.is_set():
            self.expire()
            return
        now = self._loop.time()
        self._idle_since = now
        idle.timers.add(self)
        if self._handle is None:
            self._handle = self._loop.call_at(now + self._config.keep_alive_timeout, self._due)

    async def stop(self) -> None:
        """A request arrived: the connection is busy."""
        if self._idle_since is not None:
            self._idle_since = None
            self._config.idle.timers.discard(self)

    async def close(self) -> None:
        """Stop the timer for good: the connection reads no more, so it is never idle again."""
        self._closed = True
        self._group = None
        self._settle()

    def _settle(self) -> None:
        self._idle_since = None
        self._config.idle.timers.discard(self)
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()

    def _due(self) -> None:
        self._handle = None
        since = self._idle_since
        if since is None:  # busy now: the next idle period arms the timer again
            return
        deadline = since + self._config.keep_alive_timeout
        if self._loop.time() < deadline:  # idle again since the period this was armed for
            self._handle = self._loop.call_at(deadline, self._due)
            return
        self.expire()

    def expire(self) -> None:
        """Close the idle connection now (the timer is due, or the server stops)."""
        self._settle()
        group, self._group = self._group, None
        server = self._server()
        if group is None or server is None or self._closed:
            return
        closing = server._initiate_server_close()
        try:
            group._task_group.create_task(closing)
        except RuntimeError:  # "TaskGroup ... is shutting down" / "... is finished"
            closing.close()


class SilenceWatch:
    """Abort a connection whose read has waited ``timeout_s`` without a byte.

    ``reading()`` before each read, ``received()`` after it, ``cancel()`` when the connection
    reads no more. The time spent handling what was read does not count, as with a timer
    started per read.
    """

    __slots__ = ("_abort", "_handle", "_loop", "_since", "_timeout_s")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, timeout_s: float, abort: Callable[[], Any]
    ) -> None:
        self._loop = loop
        self._timeout_s = timeout_s
        self._abort = abort
        self._handle: asyncio.TimerHandle | None = None
        self._since: float | None = None

    def reading(self) -> None:
        """A read starts now."""
        now = self._loop.time()
        self._since = now
        if self._handle is None:
            self._handle = self._loop.call_at(now + self._timeout_s, self._due)

    def received(self) -> None:
        """The read returned."""
        self._since = None

    def cancel(self) -> None:
        """No more reads."""
        self._since = None
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()

    def _due(self) -> None:
        self._handle = None
        since = self._since
        if since is None:  # not reading: the next read arms the watch again
            return
        deadline = since + self._timeout_s
        if self._loop.time() < deadline:  # a later read than the one this was armed for
            self._handle = self._loop.call_at(deadline, self._due)
            return
        self._abort()
