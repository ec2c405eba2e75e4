"""Run a real mtls-hooks server inside a test, on 127.0.0.1 and an ephemeral port.

Two context managers, both safe under pytest-xdist and ``filterwarnings = error``:

* :func:`running_server` runs :func:`mtls_hooks.serve_async` in a background thread with its
  own event loop (of the kind ``config.loop`` names): fast, in-process, and
  :meth:`ServerHandle.reload` swaps TLS material.
* :func:`running_server_process` runs :func:`mtls_hooks.serve` in a child process (optionally
  with several workers) and stops it by PID: for signals, workers and crash isolation.

Example::

    from mtls_hooks.testing import running_server

    with running_server(app, config) as server:
        response = httpx.get(server.url("/hooks"), verify=client_context)

The port is bound here before the server starts, so there is no race for it; ``config.bind``
is ignored.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mtls_hooks.serving._config import ServerConfig
from mtls_hooks.serving._reload import TLSMaterial
from mtls_hooks.serving._serving import log_refusal, serve_async
from mtls_hooks.serving._workers import serve

__all__ = ["ProcessHandle", "ServerHandle", "running_server", "running_server_process"]

_HOST = "127.0.0.1"


def _listen_ephemeral() -> socket.socket:
    sock = socket.create_server((_HOST, 0), backlog=2048)
    sock.setblocking(False)
    return sock


@dataclass
class ServerHandle:
    """A server running in a background thread.

    Attributes:
        host: ``"127.0.0.1"``.
        port: the ephemeral port it listens on.
        config: the configuration it serves.
        material: its TLS material (``material.current.generation`` counts reloads).
    """

    host: str
    port: int
    config: ServerConfig
    material: TLSMaterial
    _loop: asyncio.AbstractEventLoop = field(repr=False)

    def url(self, path: str = "/") -> str:
        """Return ``https://127.0.0.1:<port><path>``."""
        return f"https://{self.host}:{self.port}{path}"

    def reload(self, timeout_s: float = 10.0) -> bool:
        """Reload the TLS material in the server's loop, as SIGHUP would.

        Returns:
            True if the new material is in use; False if it failed and the old one was kept.
        """
        done: concurrent.futures.Future[bool] = concurrent.futures.Future()

        def _reload() -> None:
            done.set_result(self.material.reload())

        self._loop.call_soon_threadsafe(_reload)
        return done.result(timeout_s)


@contextlib.contextmanager
def running_server(
    app: Any, config: ServerConfig, *, start_timeout_s: float = 10.0, stop_timeout_s: float = 15.0
) -> Iterator[ServerHandle]:
    """Serve ``app`` with ``config`` in a background thread for the ``with`` block.

    Args:
        app: an ASGI application.
        config: server configuration (``bind`` and ``workers`` are ignored; ``loop`` picks
            the event loop).
        start_timeout_s: how long to wait for the server to accept connections.
        stop_timeout_s: how long to wait for a graceful stop on exit.

    Yields:
        A :class:`ServerHandle`.

    Raises:
        ConfigurationError: invalid TLS material, or uvloop asked for and not installed
            (raised here, in the caller's thread).
        TimeoutError: the server did not start or stop in time.
    """
    new_loop = config.loop_factory()  # asyncio's or uvloop's, as config.loop says
    material = TLSMaterial(config, on_refusal=log_refusal)  # raises before any thread exists
    sock = _listen_ephemeral()
    port = sock.getsockname()[1]
    loop = new_loop()
    ready = threading.Event()
    failure: list[BaseException] = []
    stop = asyncio.Event()

    async def _main() -> None:
        await serve_async(
            app,
            config,
            sockets=[sock],
            ready=ready.set,
            material=material,
            shutdown_trigger=stop.wait,
        )

    def _run() -> None:
        try:
            loop.run_until_complete(_main())
        except BaseException as exc:  # handed to the test thread
            failure.append(exc)
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()
            ready.set()

    thread = threading.Thread(target=_run, name=f"mtls-hooks-server-{port}", daemon=True)
    thread.start()
    try:
        if not ready.wait(start_timeout_s):
            raise TimeoutError(f"server on port {port} did not start in {start_timeout_s} s")
        if failure:
            raise failure[0]
        yield ServerHandle(_HOST, port, config, material, loop)
    finally:
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed between the check and the call
                loop.call_soon_threadsafe(stop.set)
        thread.join(stop_timeout_s)
        sock.close()
        if thread.is_alive():
            raise TimeoutError(f"server on port {port} did not stop in {stop_timeout_s} s")
    if failure:
        raise failure[0]


@dataclass
class ProcessHandle:
    """A server running in a child process.

    Attributes:
        host: ``"127.0.0.1"``.
        port: the ephemeral port it listens on.
        pid: the PID of the serving (or supervising) process.
        worker_pids: the PIDs of the processes that accept connections.
    """

    host: str
    port: int
    pid: int
    worker_pids: tuple[int, ...]
    _process: Any = field(repr=False)

    def url(self, path: str = "/") -> str:
        """Return ``https://127.0.0.1:<port><path>``."""
        return f"https://{self.host}:{self.port}{path}"

    def reload(self) -> None:
        """Send SIGHUP to the server process (a supervisor forwards it to every worker)."""
        os.kill(self.pid, signal.SIGHUP)

    def wait(self, timeout_s: float) -> int | None:
        """Wait for the process to exit on its own; return its exit code (None if running)."""
        self._process.join(timeout_s)
        code: int | None = self._process.exitcode
        return code


def _process_main(
    app_spec: str,
    config: ServerConfig,
    sock: socket.socket,
    ready: multiprocessing.connection.Connection,
) -> None:
    def _ready(pids: tuple[int, ...]) -> None:
        ready.send(pids)
        ready.close()

    raise SystemExit(serve(app_spec, config, sockets=[sock], ready=_ready))


@contextlib.contextmanager
def running_server_process(
    app_spec: str,
    config: ServerConfig,
    *,
    workers: int | None = None,
    start_timeout_s: float = 30.0,
    stop_timeout_s: float = 20.0,
) -> Iterator[ProcessHandle]:
    """Serve ``app_spec`` (``"module:attribute"``) in a child process for the ``with`` block.

    Args:
        app_spec: importable app, e.g. ``"tests.serving.apps:app"``.
        config: server configuration (``bind`` is ignored).
        workers: overrides ``config.workers``.
        start_timeout_s: how long to wait until every worker accepts connections.
        stop_timeout_s: how long SIGTERM may take before SIGKILL.

    Yields:
        A :class:`ProcessHandle`.

    Raises:
        RuntimeError: the process exited before it was ready.
        TimeoutError: it did not become ready in time.
    """
    if workers is not None:
        config = config.replace(workers=workers)
    ctx = multiprocessing.get_context("spawn")
    sock = _listen_ephemeral()
    port = sock.getsockname()[1]
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_process_main, args=(app_spec, config, sock, writer))
    try:
        proc.start()
        writer.close()
        sock.close()  # the child holds its own copy
        pid = proc.pid or 0
        if not reader.poll(start_timeout_s):
            raise TimeoutError(f"server process {proc.pid} not ready in {start_timeout_s} s")
        try:
            pids: tuple[int, ...] = reader.recv()
        except EOFError:
            proc.join(stop_timeout_s)
            raise RuntimeError(
                f"server process {proc.pid} exited with {proc.exitcode} before it was ready"
            ) from None
        yield ProcessHandle(_HOST, port, pid, pids, proc)
    finally:
        reader.close()
        writer.close()
        sock.close()
        if proc.pid is not None and proc.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            proc.join(stop_timeout_s)
            if proc.exitcode is None:
                proc.kill()
                proc.join(5.0)
        if proc.pid is not None:
            proc.close()
