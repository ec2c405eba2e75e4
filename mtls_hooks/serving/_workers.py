"""The blocking :func:`serve`: one process, or a supervisor of several worker processes.

With ``workers > 1`` the parent binds the listening sockets once and spawns the workers
(``multiprocessing`` *spawn* context: no forked event loop or OpenSSL state), each running
the asyncio server on the shared sockets with its own TLS material, SIGHUP reload and file
watch, in the event loop ``config.loop`` names (asyncio's, or uvloop's). The parent
forwards SIGHUP to every worker by PID, turns SIGINT/SIGTERM into a
graceful shutdown, and reports a worker that died on its own as a failure.

A worker is born with SIGHUP blocked and unblocks it once its reload handler is installed:
a SIGHUP during start-up (forwarded, or sent to the process group) waits in the kernel and
becomes one reload when the worker is ready, instead of killing it (default action).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from types import FrameType
from typing import Any

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.serving._config import ServerConfig
from mtls_hooks.serving._observe import metrics_listener, worker_metrics
from mtls_hooks.serving._serving import create_sockets, serve_async

__all__ = ["load_app", "run_in_loop", "serve"]

logger = logging.getLogger("mtls_hooks.serve")
ReadyCallback = Callable[[tuple[int, ...]], None]


def load_app(spec: str) -> Any:
    """Import ``"package.module:attribute"`` (the attribute may be dotted).

    Raises:
        ConfigurationError: malformed spec, module not importable, attribute missing.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(f"app {spec!r} must be 'module:attribute', e.g. 'myapp:app'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import module {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ConfigurationError(f"module {module_name!r} has no attribute {attr!r}") from exc
    return obj


def _spec_of(app: Any) -> str:
    """Find ``module:attr`` for an app object so spawned workers can import it."""
    candidates = [getattr(app, "import_name", None), getattr(app, "__module__", None)]
    for name in filter(None, candidates):
        module = sys.modules.get(name)
        for attr, value in vars(module or object()).items():
            if value is app and name != "__main__":
                return f"{name}:{attr}"
    raise ConfigurationError(
        "workers > 1 needs the app as 'module:attribute' so each worker process can import it"
    )


def run_in_loop(config: ServerConfig, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main()`` to completion in a new event loop of the kind ``config.loop`` names.

    As :func:`asyncio.run` (which takes no loop factory before Python 3.12): the loop's
    async generators and default executor are shut down, and the loop closed, at the end.

    Raises:
        ConfigurationError: an unknown loop, or uvloop not installed.
    """
    factory = config.loop_factory()  # before the coroutine exists: nothing left un-awaited
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


def serve(
    app: Any,
    config: ServerConfig,
    *,
    sockets: Sequence[socket.socket] | None = None,
    ready: ReadyCallback | None = None,
) -> int:
    """Serve ``app`` over pinned mTLS until SIGINT or SIGTERM; blocks.

    Args:
        app: an ASGI app, or ``"module:attribute"`` (required form when
            ``config.workers > 1`` unless the app is a module-level global).
        config: the server configuration.
        sockets: already-listening sockets to use instead of binding ``config.bind``.
        ready: called with the worker PIDs once every worker accepts connections.

    Returns:
        The exit status: 0 after a clean shutdown, 1 if a worker died on its own.

    Raises:
        ConfigurationError: invalid configuration or files, unbindable address, app not
            importable.
    """
    if not logging.getLogger().handlers:  # the application has not configured logging
        logging.basicConfig(
            level=config.log_level, format="%(asctime)s [%(process)d] %(name)s %(message)s"
        )
    config.loop_factory()  # uvloop missing: one line here, not one per worker
    with _sighup_held() as release:
        if config.workers == 1:
            target = load_app(app) if isinstance(app, str) else app

            def _ready() -> None:
                release()  # the reload handler is installed: a held SIGHUP reloads now
                if ready is not None:
                    ready((os.getpid(),))

            with metrics_listener(config):
                run_in_loop(
                    config, lambda: serve_async(target, config, sockets=sockets, ready=_ready)
                )
            return 0
        if threading.current_thread() is not threading.main_thread():
            raise ConfigurationError("serve() with workers > 1 must run in the main thread")
        spec = app if isinstance(app, str) else _spec_of(app)
        load_app(spec)  # fail in the parent, with one clear line, not N times in workers
        config.check_files()  # the same for the TLS material
        listening = list(sockets) if sockets is not None else create_sockets(config)
        try:
            # Once the serving sockets listen: a scrape that answers means connections queue.
            with metrics_listener(config):
                return _supervise(spec, config, listening, ready, release)
        finally:
            for sock in listening:
                sock.close()


@contextlib.contextmanager
def _sighup_held() -> Iterator[Callable[[], None]]:
    """Block SIGHUP in this thread until the returned ``release`` is called, or the block ends.

    SIGHUP asks for a reload, but until the reload handler is installed its default action
    terminates the process. Blocked, a SIGHUP waits in the kernel and is delivered (once,
    however many arrived) on release (https://man7.org/linux/man-pages/man7/signal.7.html,
    "Signal mask and pending signals").
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})

    def release() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    try:
        yield release
    finally:
        release()


def _worker_main(
    spec: str,
    config: ServerConfig,
    sockets: list[socket.socket],
    ready: multiprocessing.connection.Connection,
    index: int = 0,
) -> None:
    # SIGHUP is already blocked since the spawn (see _start_worker); blocked here too, first
    # of all, in case a start method did not carry the parent's signal mask over.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    # A spawned worker starts with no logging configuration of its own.
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s [%(process)d] %(name)s %(message)s"
    )
    worker_metrics(config)  # before the app: its imports must not fix the metric store first
    app = load_app(spec)

    def _ready() -> None:
        # serve_async installed the SIGHUP reload handler before the server became ready: a
        # SIGHUP that arrived meanwhile is delivered (one reload) right here.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        ready.send(os.getpid())
        ready.close()

    # One worker checks certificate expiry, so each warning is logged once, not N times.
    run_in_loop(
        config,
        lambda: serve_async(app, config, sockets=sockets, ready=_ready, expiry_alarm=index == 0),
    )


def _start_worker(
    ctx: Any, spec: str, config: ServerConfig, sockets: list[socket.socket], workers: list[Any]
) -> multiprocessing.connection.Connection:
    """Spawn one worker and add it to ``workers``; return the pipe it reports readiness on."""
    reader: multiprocessing.connection.Connection
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_worker_main, args=(spec, config, sockets, writer, len(workers)), daemon=False
    )
    # The signal mask survives fork and exec (sigprocmask(2), execve(2)): the worker starts
    # with SIGHUP blocked, so a SIGHUP that arrives before its handler exists cannot kill it
    # (https://man7.org/linux/man-pages/man7/signal.7.html, "Signal mask and pending
    # signals"). The parent's own SIGHUP waits the few milliseconds of start() and is
    # forwarded on unblocking, to this worker too: it is in `workers` by then.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        proc.start()
        workers.append(proc)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        writer.close()
    return reader


def _supervise(
    spec: str,
    config: ServerConfig,
    sockets: list[socket.socket],
    ready: ReadyCallback | None,
    release_sighup: Callable[[], None],
) -> int:
    ctx = multiprocessing.get_context("spawn")
    workers: list[Any] = []
    pending: dict[multiprocessing.connection.Connection, Any] = {}
    stopping = False

    def _forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
        for proc in workers:
            if proc.pid is not None and proc.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGHUP if signum == signal.SIGHUP else signal.SIGTERM)

    previous = {
        signum: signal.signal(signum, _forward)
        for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)
    }
    release_sighup()  # a SIGHUP held since serve() started is forwarded (or moot) now
    status = 0
    try:
        for _ in range(config.workers):
            reader = _start_worker(ctx, spec, config, sockets, workers)
            pending[reader] = workers[-1]
        pids: list[int] = []
        while not stopping:
            waitables: list[Any] = [*pending, *(p.sentinel for p in workers)]
            for ready_obj in multiprocessing.connection.wait(waitables):
                if ready_obj in pending:
                    conn = ready_obj
                    pending.pop(conn)
                    with contextlib.suppress(EOFError):
                        pids.append(conn.recv())
                    conn.close()
                    if not pending and ready is not None and len(pids) == config.workers:
                        ready(tuple(pids))
            dead = [p for p in workers if p.exitcode is not None]
            if dead and not stopping:
                for proc in dead:
                    logger.error("event=worker_died pid=%s exitcode=%s", proc.pid, proc.exitcode)
                status = 1
                _forward(signal.SIGTERM, None)
    finally:
        for conn in pending:
            conn.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if not stopping:  # an exception in the supervisor itself: stop the workers
            _forward(signal.SIGTERM, None)
        deadline = time.monotonic() + config.graceful_timeout_s + 5.0
        for proc in workers:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.exitcode is None:
                proc.kill()
                proc.join(5.0)
            if proc.exitcode not in (0, -signal.SIGTERM):
                status = 1
            proc.close()
    return status
