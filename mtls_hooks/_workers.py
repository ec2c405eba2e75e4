"""The blocking :func:`serve`: one process, or a supervisor of several worker processes.

With ``workers > 1`` the parent binds the listening sockets once and spawns the workers
(``multiprocessing`` *spawn* context: no forked event loop or OpenSSL state), each running
the asyncio server on the shared sockets with its own TLS material, SIGHUP reload and file
watch. The parent forwards SIGHUP to every worker by PID, turns SIGINT/SIGTERM into a
graceful shutdown, and reports a worker that died on its own as a failure.
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
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from mtls_hooks._config import ServerConfig
from mtls_hooks._errors import ConfigurationError
from mtls_hooks._serving import create_sockets, serve_async

__all__ = ["load_app", "serve"]

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
    if config.workers == 1:
        target = load_app(app) if isinstance(app, str) else app

        def _ready() -> None:
            if ready is not None:
                ready((os.getpid(),))

        asyncio.run(serve_async(target, config, sockets=sockets, ready=_ready))
        return 0
    if threading.current_thread() is not threading.main_thread():
        raise ConfigurationError("serve() with workers > 1 must run in the main thread")
    spec = app if isinstance(app, str) else _spec_of(app)
    load_app(spec)  # fail in the parent, with one clear line, not N times in workers
    config.check_files()  # the same for the TLS material
    listening = list(sockets) if sockets is not None else create_sockets(config)
    try:
        return _supervise(spec, config, listening, ready)
    finally:
        for sock in listening:
            sock.close()


def _worker_main(
    spec: str,
    config: ServerConfig,
    sockets: list[socket.socket],
    ready: multiprocessing.connection.Connection,
) -> None:
    # A spawned worker starts with no logging configuration of its own.
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s [%(process)d] %(name)s %(message)s"
    )
    app = load_app(spec)

    def _ready() -> None:
        ready.send(os.getpid())
        ready.close()

    asyncio.run(serve_async(app, config, sockets=sockets, ready=_ready))


def _supervise(
    spec: str,
    config: ServerConfig,
    sockets: list[socket.socket],
    ready: ReadyCallback | None,
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
    status = 0
    try:
        for _ in range(config.workers):
            reader, writer = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_worker_main, args=(spec, config, sockets, writer), daemon=False
            )
            proc.start()
            writer.close()
            workers.append(proc)
            pending[reader] = proc
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
