"""Server memory held by TLS handshakes that send nothing (issue 9 §3, a load balancer's check).

A TLS health check connects, completes the mTLS handshake and closes without a request. Each
case runs its own ``mtls_hooks`` server process (one worker, the bare app below, a keep-alive
timeout of 65 s as behind a load balancer whose idle timeout is 60 s) and reads that
process's resident set (``VmRSS`` in ``/proc/PID/status``) after ``N/10`` and after ``N``
such connections:

* ``pinned, no request``: the health check itself;
* ``pinned, one request``: one keep-alive GET, then the client closes;
* ``unpinned, refused``: a CA-valid client that no pin admits (refused in the handshake).

Between bursts the bench waits (polling, with a deadline) until the worker's open sockets
are back to the idle count: a connection the server still holds after its client left is
what leaked. The verdict: RSS after ``N`` stays within ``--bound-mib`` of RSS after
``N/10``. Before the fix the closed connections stayed open until the keep-alive timeout,
each holding asyncio's 256 KiB TLS read buffer: 3,000 health checks took one worker from
65 MB to 860 MB. Unless ``--quick``, stock Hypercorn with the same app and TLS settings (and
its own 5 s keep-alive timeout) is measured in the same run as the baseline.

Run: ``.venv/bin/python -m bench.bench_handshake_memory [--handshakes 3000] [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from quart import Quart

from bench._servers import BenchPki, bare_app, run_server
from mtls_hooks.serving._config import ServerConfig
from mtls_hooks.testing import running_server_process

__all__ = ["QUICK_ARGV", "Burst", "app", "main", "measure_case", "open_sockets", "rss_kib"]

#: Arguments of ``bench.run_all --quick`` and of the CI test: 300 handshakes distinguish a
#: leak (about 80 MB) from a bounded server (a few MB).
QUICK_ARGV = ["--handshakes", "300", "--quick"]
Row = dict[str, object]

KEEP_ALIVE_TIMEOUT_S = 65.0  # above a load balancer's 60 s idle timeout, as advised for LBs
_SETTLE_TIMEOUT_S = 10.0
_CLIENT_THREADS = 4

#: The app every case serves: GET / answers ``ok``.
app = Quart("bench_handshake_memory")


@app.get("/")
async def index() -> str:
    return "ok"


@dataclass(frozen=True)
class Pki:
    """One CA, the server's certificate, a pinned client and an unpinned one (PEM paths)."""

    directory: str
    ca: str
    server_cert: str
    server_key: str
    pinned_cert: str
    pinned_key: str
    pinned_pin: str
    stranger_cert: str
    stranger_key: str

    def bench_pki(self) -> BenchPki:
        """The same files in the shape of ``bench._servers`` (for the stock baseline)."""
        return BenchPki(
            self.directory,
            self.ca,
            self.server_cert,
            self.server_key,
            self.pinned_cert,
            self.pinned_key,
            self.pinned_pin,
        )

    def config(self) -> ServerConfig:
        """The server configuration every case uses: one worker, the pinned client only."""
        return ServerConfig(
            certfile=self.server_cert,
            keyfile=self.server_key,
            client_ca=(self.ca,),
            pins=(self.pinned_pin,),
            workers=1,
            keep_alive_timeout_s=KEEP_ALIVE_TIMEOUT_S,
            log_level="ERROR",  # the refused case would log a line per handshake
        )


def make_pki(directory: Path) -> Pki:
    """Issue the certificates of one run into ``directory``."""
    from certs_tool import CA

    ca = CA()
    files = {name: str(directory / name) for name in ("ca.pem", "server.pem", "server.key")}
    ca.cert_pem.write_to_path(files["ca.pem"])
    server = ca.issue_server("localhost", "127.0.0.1")
    server.chain_pem.write_to_path(files["server.pem"])
    server.private_key_pem().write_to_path(files["server.key"])
    clients = {}
    for name in ("pinned", "stranger"):
        issued = ca.issue_client(common_name=f"health-check-{name}")
        issued.chain_pem.write_to_path(directory / f"{name}.pem")
        issued.private_key_pem().write_to_path(directory / f"{name}.key")
        clients[name] = issued
    return Pki(
        directory=str(directory),
        ca=files["ca.pem"],
        server_cert=files["server.pem"],
        server_key=files["server.key"],
        pinned_cert=str(directory / "pinned.pem"),
        pinned_key=str(directory / "pinned.key"),
        pinned_pin=clients["pinned"].spki_pin,
        stranger_cert=str(directory / "stranger.pem"),
        stranger_key=str(directory / "stranger.key"),
    )


# --------------------------------------------------------------------------- the server side


def rss_kib(pid: int) -> int:
    """The resident set of process ``pid``, in KiB (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def open_sockets(pid: int) -> int:
    """How many sockets process ``pid`` holds open (its listening socket included)."""
    count = 0
    fd_dir = Path(f"/proc/{pid}/fd")
    for entry in fd_dir.iterdir():
        with contextlib.suppress(OSError):  # closed between the listing and the readlink
            count += os.readlink(entry).startswith("socket:")
    return count


def _settle(pid: int, idle_sockets: int, timeout_s: float) -> int:
    """Poll until ``pid`` holds no more sockets than when idle; return what it still holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = open_sockets(pid) - idle_sockets
        if held <= 0 or time.monotonic() >= deadline:
            return max(held, 0)
        time.sleep(0.05)


# --------------------------------------------------------------------------- the client side


@dataclass
class Burst:
    """What one burst of client connections saw."""

    completed: int = 0  # handshakes the client completed (TLS 1.3: before the server's check)
    answered: int = 0  # requests answered 200
    failed: int = 0  # connections that raised (a refusal, when the client is unpinned)


Client = Callable[[ssl.SSLContext, int], str]


def health_check(context: ssl.SSLContext, port: int) -> str:
    """Connect, complete the handshake, close: a load balancer's TLS check."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost"),
    ):
        return "completed"


def one_request(context: ssl.SSLContext, port: int) -> str:
    """Connect, send one keep-alive GET, read its answer, close."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        answer = b""
        while not answer.endswith(b"\r\n\r\nok"):
            chunk = tls.recv(4096)
            if not chunk:
                break
            answer += chunk
        return "answered" if answer.startswith(b"HTTP/1.1 200") else "failed"


def _burst(client: Client, context: ssl.SSLContext, port: int, count: int) -> Burst:
    burst = Burst()
    lock = threading.Lock()
    per_thread = [
        count // _CLIENT_THREADS + (i < count % _CLIENT_THREADS) for i in range(_CLIENT_THREADS)
    ]

    def run(n: int) -> None:
        for _ in range(n):
            try:
                outcome = client(context, port)
            except (ssl.SSLError, OSError):
                outcome = "failed"
            with lock:
                setattr(burst, outcome, getattr(burst, outcome) + 1)

    threads = [threading.Thread(target=run, args=(n,)) for n in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return burst


def client_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """A plain stdlib client context (nothing of ours on the client side)."""
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(cert, key)
    return context


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class CaseResult:
    """RSS after ``N/10`` and after ``N`` connections, and the sockets still held."""

    name: str
    handshakes: int
    rss_start_kib: int
    rss_tenth_kib: int
    rss_all_kib: int
    held_tenth: int
    held_all: int
    burst: Burst

    @property
    def growth_kib(self) -> int:
        """RSS growth from ``N/10`` to ``N`` connections."""
        return self.rss_all_kib - self.rss_tenth_kib

    @property
    def kib_per_handshake(self) -> float:
        """That growth divided by the connections that made it."""
        return self.growth_kib / max(1, self.handshakes - self.handshakes // 10)


def measure_case(
    name: str, *, pid: int, port: int, client: Client, context: ssl.SSLContext, handshakes: int
) -> CaseResult:
    """Warm the server up, then measure RSS after ``handshakes // 10`` and ``handshakes``."""
    idle_sockets = open_sockets(pid)
    _burst(client, context, port, 20)  # imports, first-use caches, allocator arenas
    _settle(pid, idle_sockets, _SETTLE_TIMEOUT_S)
    start = rss_kib(pid)
    tenth = handshakes // 10
    burst = _burst(client, context, port, tenth)
    held_tenth = _settle(pid, idle_sockets, _SETTLE_TIMEOUT_S)
    rss_tenth = rss_kib(pid)
    rest = _burst(client, context, port, handshakes - tenth)
    held_all = _settle(pid, idle_sockets, _SETTLE_TIMEOUT_S)
    rss_all = rss_kib(pid)
    total = Burst(
        burst.completed + rest.completed, burst.answered + rest.answered, burst.failed + rest.failed
    )
    return CaseResult(name, handshakes, start, rss_tenth, rss_all, held_tenth, held_all, total)


@contextlib.contextmanager
def _ours(pki: Pki) -> Iterator[tuple[int, int]]:
    with running_server_process("bench.bench_handshake_memory:app", pki.config()) as server:
        yield server.worker_pids[0], server.port


@contextlib.contextmanager
def _stock(pki: Pki) -> Iterator[tuple[int, int]]:
    with run_server("stock", bare_app, pki.bench_pki(), cpu=None) as server:
        yield server.pid, server.port


def measure(handshakes: int, *, quick: bool) -> list[CaseResult]:
    """Run every case (stock Hypercorn too unless ``quick``), each on a fresh server."""
    with tempfile.TemporaryDirectory(prefix="bench-handshake-memory-") as tmp:
        pki = make_pki(Path(tmp))
        pinned = client_context(pki.pinned_cert, pki.pinned_key, pki.ca)
        stranger = client_context(pki.stranger_cert, pki.stranger_key, pki.ca)
        cases: list[
            tuple[
                str,
                Callable[[Pki], contextlib.AbstractContextManager[tuple[int, int]]],
                Client,
                ssl.SSLContext,
            ]
        ] = [
            ("ours pinned, no request", _ours, health_check, pinned),
            ("ours pinned, one request", _ours, one_request, pinned),
            ("ours unpinned, refused", _ours, health_check, stranger),
        ]
        if not quick:
            cases.append(("stock Hypercorn, no request", _stock, health_check, pinned))
        results = []
        for name, server, client, context in cases:
            with server(pki) as (pid, port):
                results.append(
                    measure_case(
                        name,
                        pid=pid,
                        port=port,
                        client=client,
                        context=context,
                        handshakes=handshakes,
                    )
                )
        return results


def rows_of(results: list[CaseResult], bound_mib: float) -> list[Row]:
    """One row per case: the growth from ``N/10`` to ``N``, with its verdict for ours."""
    rows: list[Row] = []
    for result in results:
        row: Row = {
            "bench": "handshake-memory",
            "case": result.name,
            "value": round(result.growth_kib / 1024, 1),
            "unit": f"MiB, {result.handshakes // 10} -> {result.handshakes} conns",
            "note": (
                f"{result.kib_per_handshake:.1f} KiB/conn; RSS {result.rss_start_kib // 1024}"
                f" -> {result.rss_all_kib // 1024} MiB; sockets held after: "
                f"{result.held_tenth}, {result.held_all}; client: {result.burst.completed} "
                f"completed, {result.burst.answered} answered, {result.burst.failed} failed"
            ),
        }
        if result.name.startswith("ours"):
            row["target"] = f"<= {bound_mib:g}"
            row["ok"] = result.growth_kib <= bound_mib * 1024 and result.held_all == 0
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> list[Row]:
    """Measure, print the table and return its rows for ``bench/run_all.py``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=3000)
    parser.add_argument("--bound-mib", type=float, default=10.0, help="allowed RSS growth")
    parser.add_argument("--quick", action="store_true", help="our server only, no baseline")
    args = parser.parse_args(argv)
    rows = rows_of(measure(args.handshakes, quick=args.quick), args.bound_mib)
    width = max(len(str(row["case"])) for row in rows)
    for row in rows:
        verdict = (
            f" (target {row['target']}: {'ok' if row['ok'] else 'MISSED'})" if "ok" in row else ""
        )
        print(f"{row['case']:<{width}}  {row['value']:>7} {row['unit']}{verdict}  {row['note']}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
