"""The servers the serving benchmark compares, each in its own process, stopped by PID.

* ``stock``: a Quart app on stock ``hypercorn.asyncio.serve`` with the same TLS settings
  (certificate, client CA, ``CERT_REQUIRED``, TLS >= 1.2) and nothing of ours;
* ``ours``: the same app on :func:`mtls_hooks.serving._workers.serve` (pinning, ``tls`` extension).

Apps come from module-level factories (picklable by reference, so a forkserver child can
build them): :func:`bare_app` and the receiver factories. A new scenario is one more factory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bench.loadgen import mp_context

if TYPE_CHECKING:
    from quart import Quart

__all__ = [
    "SIGNING_SECRET",
    "BenchPki",
    "ServerKind",
    "bare_app",
    "make_pki",
    "receiver_app_memory",
    "receiver_app_memory_quart",
    "receiver_app_sqlite",
    "run_server",
]

ServerKind = Literal["stock", "ours"]
AppFactory = Callable[["BenchPki"], "Quart"]

# The spec's public test vector secret: nothing here is confidential.
SIGNING_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105
_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 10.0
_STOCK_BACKLOG = 100  # hypercorn's default: the baseline keeps every default it can


@dataclass(frozen=True)
class BenchPki:
    """Certificate files for one benchmark run (all PEM paths, as strings)."""

    directory: str
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    client_pin: str


def make_pki(directory: Path) -> BenchPki:
    """Issue a CA, a server certificate for localhost/127.0.0.1 and a client certificate."""
    from certs_tool import CA

    directory.mkdir(parents=True, exist_ok=True)
    ca = CA()
    server = ca.issue_server("localhost", "127.0.0.1")
    client = ca.issue_client(common_name="bench")
    pki = BenchPki(
        directory=str(directory),
        ca=str(directory / "ca.pem"),
        server_cert=str(directory / "server.pem"),
        server_key=str(directory / "server.key"),
        client_cert=str(directory / "client.pem"),
        client_key=str(directory / "client.key"),
        client_pin=client.spki_pin,
    )
    ca.cert_pem.write_to_path(pki.ca)
    server.chain_pem.write_to_path(pki.server_cert)
    server.private_key_pem().write_to_path(pki.server_key)
    client.chain_pem.write_to_path(pki.client_cert)
    client.private_key_pem().write_to_path(pki.client_key)
    return pki


# --------------------------------------------------------------------------- apps


def bare_app(pki: BenchPki) -> Quart:
    """POST / reads the body and answers 200 ``ok``: the app both servers run."""
    from quart import Quart, request

    app = Quart("bench_bare")

    @app.post("/")
    async def index() -> str:
        await request.get_data()
        return "ok"

    return app


def _receiver_app(pki: BenchPki, store: Any, *, quart_request: bool = False) -> Quart:
    from quart import Quart

    from mtls_hooks.core._events import WebhookEvent
    from mtls_hooks.receiver._receiver import WebhookReceiver

    app = Quart("bench_receiver")
    hooks = WebhookReceiver(
        app,
        path="/",
        keys=[SIGNING_SECRET],
        pins=[pki.client_pin],
        store=store,
        quart_request=quart_request,
    )

    @hooks.on_any
    async def handle(event: WebhookEvent) -> None:
        return None

    return app


def receiver_app_memory(pki: BenchPki) -> Quart:
    """Full verification: pin rule, HMAC, timestamp, in-memory dedupe, handler dispatch."""
    from mtls_hooks.stores._replay import MemoryDedupeStore

    return _receiver_app(pki, MemoryDedupeStore())


def receiver_app_memory_quart(pki: BenchPki) -> Quart:
    """Full verification with the memory store, through Quart's request machinery
    (``quart_request=True``: the receiver as it was before the lean path)."""
    from mtls_hooks.stores._replay import MemoryDedupeStore

    return _receiver_app(pki, MemoryDedupeStore(), quart_request=True)


def receiver_app_sqlite(pki: BenchPki) -> Quart:
    """The same with the persistent SQLite dedupe store (a fresh file per server start)."""
    from mtls_hooks.stores._replay import SQLiteDedupeStore

    path = Path(pki.directory) / f"dedupe-{os.getpid()}.sqlite3"
    return _receiver_app(pki, SQLiteDedupeStore(path))


# --------------------------------------------------------------------------- processes


def _pin(cpu: int | None) -> None:
    if cpu is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})


def _serve_stock(app: Quart, pki: BenchPki, report: Callable[[int], None]) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    sock = socket.create_server(("127.0.0.1", 0), backlog=_STOCK_BACKLOG)
    report(sock.getsockname()[1])
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.certfile = pki.server_cert
    config.keyfile = pki.server_key
    config.ca_certs = pki.ca
    # Hypercorn's default is CERT_NONE even with ca_certs (DESIGN.md).
    config.verify_mode = ssl.CERT_REQUIRED
    config.loglevel = "WARNING"  # no "Running on" line in the table; no per-request effect

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await serve(app, config, shutdown_trigger=stop.wait)

    asyncio.run(main())


def _serve_ours(
    app: Quart, pki: BenchPki, report: Callable[[int], None], loop: str = "asyncio"
) -> None:
    from mtls_hooks.serving._config import ServerConfig
    from mtls_hooks.serving._serving import create_sockets
    from mtls_hooks.serving._workers import serve

    config = ServerConfig(
        certfile=pki.server_cert,
        keyfile=pki.server_key,
        client_ca=(pki.ca,),
        pins=(pki.client_pin,),
        bind=("127.0.0.1:0",),
        workers=1,
        loop=loop,
        log_level="WARNING",
    )
    sockets = create_sockets(config)
    report(sockets[0].getsockname()[1])
    serve(app, config, sockets=sockets)


def _server_process(  # noqa: PLR0917 - the Process target's positional arguments
    kind: ServerKind,
    factory: AppFactory,
    pki: BenchPki,
    cpu: int | None,
    port_out: Any,
    loop: str,
) -> None:
    _pin(cpu)
    app = factory(pki)
    if kind == "stock":
        _serve_stock(app, pki, port_out.send)
    else:
        _serve_ours(app, pki, port_out.send, loop)


@dataclass(frozen=True)
class RunningServer:
    """A server process: where it listens and which PID to watch."""

    port: int
    pid: int


def _probe(port: int, pki: BenchPki, deadline: float) -> None:
    """One real mTLS request, so a broken server fails here with a clear error."""
    import http.client

    ctx = ssl.create_default_context(cafile=pki.ca)
    ctx.load_cert_chain(pki.client_cert, pki.client_key)
    last: Exception | None = None
    while time.monotonic() < deadline:
        conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=5)
        try:
            # Any status proves HTTP is served; a path outside every webhook endpoint keeps
            # the receiver's refusal log quiet.
            conn.request("GET", "/__bench_probe")
            conn.getresponse().read()
            return
        except (OSError, http.client.HTTPException) as exc:
            last = exc
            time.sleep(0.05)
        finally:
            conn.close()
    msg = f"server on port {port} did not answer: {last!r}"
    raise RuntimeError(msg)


@contextlib.contextmanager
def run_server(
    kind: ServerKind,
    factory: AppFactory,
    pki: BenchPki,
    *,
    cpu: int | None,
    loop: str = "asyncio",
) -> Iterator[RunningServer]:
    """Start ``factory``'s app on ``kind`` in its own process; stop it by PID on exit.

    ``loop`` is our server's event loop (``asyncio`` or ``uvloop``); stock Hypercorn always
    runs on asyncio's.

    Raises:
        RuntimeError: the process died or did not answer within the bound.
    """
    with serving_process(
        _server_process, lambda out: (kind, factory, pki, cpu, out, loop), pki, what=kind
    ) as server:
        yield server


@contextlib.contextmanager
def serving_process(
    target: Callable[..., None],
    args: Callable[[Any], tuple[Any, ...]],
    pki: BenchPki | None,
    *,
    what: str,
    daemon: bool = True,
) -> Iterator[RunningServer]:
    """Run ``target(*args(out))`` in a process that sends its port on ``out``; stop it by
    PID on exit (SIGTERM, so a supervisor stops its workers; SIGKILL after a bound).

    With ``pki``, one real mTLS request checks the server before it is measured.

    Raises:
        RuntimeError: the process died or did not answer within the bound.
    """
    ctx = mp_context()
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=args(sender), daemon=daemon)  # type: ignore[attr-defined]
    proc.start()
    sender.close()
    try:
        try:
            port = receiver.recv() if receiver.poll(_START_TIMEOUT_S) else None
        except EOFError:
            port = None
        if not isinstance(port, int):
            msg = f"{what} server (pid {proc.pid}) died or did not report its port"
            raise RuntimeError(msg)
        if pki is not None:
            _probe(port, pki, time.monotonic() + _START_TIMEOUT_S)
        yield RunningServer(port=port, pid=proc.pid)
    finally:
        receiver.close()
        if proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            proc.join(_STOP_TIMEOUT_S)
        if proc.is_alive():
            proc.kill()
            proc.join(_STOP_TIMEOUT_S)
