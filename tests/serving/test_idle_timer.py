"""A connection's timers: keep-alive and read silence (``mtls_hooks.serving._timers``).

Hypercorn 0.18 restarts its idle timer through a task group that may already refuse tasks,
leaving a never-awaited ``TCPServer._idle_timeout`` coroutine behind; ours closes it. The
timers are re-armed lazily: their deadlines must still be those of the last period.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import types
import warnings
from collections.abc import Iterator

import httpx
import pytest
from hypercorn.asyncio.task_group import TaskGroup as HypercornTaskGroup
from hypercorn.asyncio.worker_context import WorkerContext
from quart import Quart, request

from mtls_hooks.serving._timers import IdleConnections, IdleTimer, SilenceWatch
from mtls_hooks.testing import running_server
from tests.serving.conftest import Cast, LogCollector, Pki

# Without the fix about one early refusal in three leaks the coroutine; thirty make a pass
# by luck improbable (< 0.1 %) and take about two seconds.
_EARLY_REFUSALS = 30

early_refusal = Quart(__name__)


@early_refusal.post("/upload")
async def upload() -> tuple[dict[str, str], int]:
    size = 0
    async for chunk in request.body:
        size += len(chunk)
        if size > 4096:  # refused while the client still streams, as a body-size limit does
            break
    return {"reason": "too-large"}, 413


def _long_body() -> Iterator[bytes]:
    for _ in range(64):
        yield b"x" * 1024


@contextlib.contextmanager
def _asyncio_log_as_text() -> Iterator[LogCollector]:
    """Collect the asyncio logger's lines as text, away from pytest's log capture.

    An orphaned coroutine is referenced from the traceback of the task that failed to
    schedule it, and asyncio logs that task ("Task exception was never retrieved") with the
    traceback attached: a record kept by pytest's capture would keep the coroutine alive
    past this test, and its warning would fail a later one.
    """
    with LogCollector("asyncio") as collector:
        propagate = collector.logger.propagate
        collector.logger.propagate = False
        try:
            yield collector
        finally:
            collector.logger.propagate = propagate


def test_early_http2_refusals_leave_no_unawaited_idle_timer(pki: Pki, cast: Cast) -> None:
    context = pki.context(cast.alpha, http2=True)
    # Garbage of earlier tests in this worker (an unclosed socket) must not warn in here.
    gc.collect()
    with warnings.catch_warnings(record=True) as caught, _asyncio_log_as_text() as asyncio_log:
        warnings.simplefilter("always")
        with running_server(early_refusal, pki.config(cast.alpha)) as server:
            for _ in range(_EARLY_REFUSALS):
                with (
                    httpx.Client(verify=context, http2=True, timeout=10) as client,
                    # Hypercorn then drops the connection (KeyError on the next DATA frame,
                    # pgjones/hypercorn#329): the client may never read its 413.
                    contextlib.suppress(httpx.RemoteProtocolError, httpx.WriteError),
                ):
                    response = client.post(server.url("/upload"), content=_long_body())
                    assert response.status_code == 413
                    assert response.http_version == "HTTP/2"
        gc.collect()  # an orphaned coroutine warns when it is collected
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []
    # The task that could not schedule the timer used to die with that RuntimeError.
    assert [line for line in asyncio_log.lines if "never retrieved" in line] == []


class _Server:
    """What the timer reads of its ``TCPServer``: loop, config, context, the close."""

    def __init__(self, *, terminated: bool = False) -> None:
        self.loop = asyncio.get_running_loop()
        self.config = types.SimpleNamespace(idle=IdleConnections(), keep_alive_timeout=0.01)
        self.context = WorkerContext(None)
        self.terminated = terminated
        self.closes = 0
        self.closed = asyncio.Event()

    async def start(self) -> _Server:
        if self.terminated:
            await self.context.terminated.set()
        return self

    async def _initiate_server_close(self) -> None:
        self.closes += 1
        self.closed.set()


@pytest.mark.asyncio
async def test_idle_timer_closes_the_coroutine_a_finished_group_refuses() -> None:
    group = HypercornTaskGroup(asyncio.get_running_loop())
    async with group:
        pass
    server = _Server()
    timer = IdleTimer(server)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await timer.restart(group, None)
        timer.expire()  # the group refuses the close: no RuntimeError reaches the caller
        gc.collect()
    await timer.stop()
    assert [str(w.message) for w in caught] == []
    assert server.closes == 0
    server.config.idle.stop()


@pytest.mark.asyncio
async def test_idle_timer_closes_an_idle_connection_once_the_timeout_passes() -> None:
    server = _Server()
    async with HypercornTaskGroup(asyncio.get_running_loop()) as group:
        timer = IdleTimer(server)
        await timer.restart(group, None)
        assert server.config.idle.timers == {timer}
        await asyncio.wait_for(server.closed.wait(), 5)  # a connection's group stays open
    assert server.closes == 1
    assert server.config.idle.timers == set()
    server.config.idle.stop()


@pytest.mark.asyncio
async def test_idle_timer_stopped_by_a_request_closes_nothing() -> None:
    server = _Server()
    async with HypercornTaskGroup(asyncio.get_running_loop()) as group:
        timer = IdleTimer(server)
        await timer.restart(group, None)
        await timer.stop()
        assert server.config.idle.timers == set()
        await asyncio.sleep(0.05)  # well past the 10 ms timeout: the timer was cancelled
    assert server.closes == 0
    server.config.idle.stop()


@pytest.mark.asyncio
async def test_idle_connections_close_at_once_when_the_server_stops() -> None:
    server = _Server()
    server.config.keep_alive_timeout = 3600.0
    async with HypercornTaskGroup(asyncio.get_running_loop()) as group:
        timer = IdleTimer(server)
        await timer.restart(group, None)
        await server.context.terminated.set()
        await asyncio.wait_for(server.closed.wait(), 5)
    assert server.closes == 1
    # Falling idle after the stop closes at once, too (in a task of the group, awaited by it).
    async with HypercornTaskGroup(asyncio.get_running_loop()) as group:
        await IdleTimer(server).restart(group, None)
    assert server.closes == 2
    server.config.idle.stop()


@pytest.mark.asyncio
async def test_idle_timer_of_a_closed_connection_never_fires() -> None:
    server = await _Server(terminated=True).start()
    async with HypercornTaskGroup(asyncio.get_running_loop()) as group:
        timer = IdleTimer(server)
        await timer.close()
        await timer.restart(group, None)
    assert server.closes == 0
    server.config.idle.stop()


@pytest.mark.asyncio
async def test_idle_timer_counts_from_the_start_of_the_last_idle_period() -> None:
    server = _Server()
    server.config.keep_alive_timeout = 0.2
    loop = server.loop
    async with HypercornTaskGroup(loop) as group:
        timer = IdleTimer(server)
        await timer.restart(group, None)  # armed for the first period's end
        await asyncio.sleep(0.1)  # time passes (not a synchronisation)
        await timer.stop()  # a request
        await timer.restart(group, None)  # idle again: the deadline moves
        second_idle = loop.time()
        await asyncio.wait_for(server.closed.wait(), 5)
        assert loop.time() >= second_idle + 0.2
    assert server.closes == 1
    server.config.idle.stop()


@pytest.mark.asyncio
async def test_silence_watch_aborts_only_a_read_that_waited_too_long() -> None:
    loop = asyncio.get_running_loop()
    aborted = asyncio.Event()
    watch = SilenceWatch(loop, 0.1, aborted.set)
    watch.reading()
    await asyncio.sleep(0.05)  # the bytes come in time
    watch.received()
    await asyncio.sleep(0.1)  # handling them, past the first read's deadline: not silence
    assert not aborted.is_set()
    watch.reading()
    started = loop.time()
    await asyncio.wait_for(aborted.wait(), 5)
    assert loop.time() >= started + 0.1
    watch.cancel()


@pytest.mark.asyncio
async def test_silence_watch_cancelled_never_aborts() -> None:
    loop = asyncio.get_running_loop()
    aborted = asyncio.Event()
    watch = SilenceWatch(loop, 0.01, aborted.set)
    watch.reading()
    watch.cancel()
    await asyncio.sleep(0.05)  # well past the deadline
    assert not aborted.is_set()
