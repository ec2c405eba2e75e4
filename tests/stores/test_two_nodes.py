"""Two receiver nodes (two ``mtls-hooks serve`` processes on their own ports) share one store.

The same webhook id is posted to both nodes at once, 50 times, with handlers slower than the
round trip: on PostgreSQL and on Redis each handler runs once per id, 0 duplicates. The
failing twin is the memory store, per process: there the same race runs handlers twice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import queue
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from certs_tool import CA, IssuedCert
from tests.peers import PG_URL, REDIS_URL
from tests.receiver.conftest import Sender
from tests.stores._backends import Spec, need, new_namespace

REPO = Path(__file__).resolve().parents[2]
IDS = 50
HANDLER_S = 0.5


class Node:
    """One ``mtls-hooks serve`` process; stopped by PID."""

    def __init__(self, env: dict[str, str], tls: list[str]) -> None:
        cli = Path(sys.executable).with_name("mtls-hooks")
        self.proc = subprocess.Popen(
            [str(cli), "serve", "tests.stores.node_app:app", *tls, "--bind", "127.0.0.1:0"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.thread = threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True)
        self.thread.start()
        self.port = int(self._wait_for(r"Running on https://127\.0\.0\.1:(\d+)").group(1))

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.output.append(line)
            self.lines.put(line)

    def _wait_for(self, pattern: str, timeout_s: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while (left_s := deadline - time.monotonic()) > 0:
            with contextlib.suppress(queue.Empty):
                if match := re.search(pattern, self.lines.get(timeout=left_s)):
                    return match
            if self.proc.poll() is not None and self.lines.empty():
                break
        pytest.fail(f"node never served: {''.join(self.output)[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.thread.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@contextlib.contextmanager
def two_nodes(
    url: str, namespace: str, runs: Path, sender: Sender, tls: list[str]
) -> Iterator[tuple[Node, Node]]:
    env = {
        **os.environ,
        "MTLS_HOOKS_DEDUPE_URL": url,
        "MTLS_HOOKS_DEDUPE_NAMESPACE": namespace,
        "MTLS_HOOKS_KEYS": sender.key,
        "NODE_RUNS": str(runs),
        "NODE_HANDLER_S": str(HANDLER_S),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("MTLS_HOOKS_DEDUPE_PATH", None)
    nodes: list[Node] = []
    try:
        nodes.append(Node(env, tls))
        nodes.append(Node(env, tls))
        yield nodes[0], nodes[1]
    finally:
        for node in nodes:
            node.stop()


async def post_everywhere(
    ports: tuple[int, int], sender: Sender, context: ssl.SSLContext, ids: list[str]
) -> list[tuple[int, int]]:
    """Post each id to both nodes at the same moment; return each pair of statuses."""
    limits = httpx.Limits(max_connections=IDS)
    async with (
        httpx.AsyncClient(verify=context, timeout=30, limits=limits) as first,
        httpx.AsyncClient(verify=context, timeout=30, limits=limits) as second,
    ):

        async def post(client: httpx.AsyncClient, port: int, webhook_id: str) -> int:
            body, headers = sender.request(webhook_id=webhook_id)
            url = f"https://127.0.0.1:{port}/hooks"
            return (await client.post(url, content=body, headers=headers)).status_code

        async def pair(webhook_id: str) -> tuple[int, int]:
            a, b = await asyncio.gather(
                post(first, ports[0], webhook_id), post(second, ports[1], webhook_id)
            )
            return a, b

        return list(await asyncio.gather(*(pair(webhook_id) for webhook_id in ids)))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "url"),
    [
        pytest.param("postgresql", PG_URL, id="postgresql"),
        pytest.param("redis", REDIS_URL, id="redis"),
        pytest.param("memory", "memory:", id="memory-per-process-twin"),
    ],
)
def test_the_same_id_posted_to_two_nodes_at_once_runs_its_handler_once(
    backend: str,
    url: str,
    *,
    tmp_path: Path,
    certs_ca: CA,
    certs_server: IssuedCert,
    certs_client: IssuedCert,
) -> None:
    need(backend)
    sender = Sender()
    namespace = new_namespace()
    runs = tmp_path / "runs.log"
    certs_server.chain_pem.write_to_path(tmp_path / "server.pem")
    certs_server.private_key_pem().write_to_path(tmp_path / "server-key.pem")
    certs_ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    tls = ["--cert", str(tmp_path / "server.pem"), "--key", str(tmp_path / "server-key.pem")]
    tls += ["--client-ca", str(tmp_path / "ca.pem"), "--pin", certs_client.spki_pin]
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    certs_client.configure_cert(context)
    ids = [f"msg_node_{n}" for n in range(IDS)]
    try:
        with two_nodes(url, namespace, runs, sender, tls) as (a, b):
            first = asyncio.run(post_everywhere((a.port, b.port), sender, context, ids))
            retried = asyncio.run(post_everywhere((a.port, b.port), sender, context, ids))
    finally:
        if backend != "memory":
            Spec(backend, namespace).drop()
    counts = collections.Counter(line.split()[0] for line in runs.read_text().splitlines())
    if backend == "memory":
        # Each node has its own memory: the race runs handlers twice. This is what the
        # shared stores prevent, and shows that the test can see a duplicate.
        assert set(counts.values()) == {2}
        return
    assert sorted(counts) == sorted(ids)  # every id handled...
    assert set(counts.values()) == {1}  # ...exactly once, across both nodes: 0 duplicates
    assert all(204 in pair for pair in first)
    assert any(503 in pair for pair in first)  # the race was real: one node saw it in flight
    assert all(pair == (204, 204) for pair in retried)  # duplicates, acknowledged


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("postgresql://hooks:s3cret@127.0.0.1:1/hooks", id="postgresql"),
        pytest.param("redis://:s3cret@127.0.0.1:1/0", id="redis"),
    ],
)
def test_serve_with_an_unreachable_store_exits_with_one_line(
    url: str, tmp_path: Path, certs_ca: CA, certs_server: IssuedCert
) -> None:
    certs_server.chain_pem.write_to_path(tmp_path / "server.pem")
    certs_server.private_key_pem().write_to_path(tmp_path / "server-key.pem")
    certs_ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    cli = Path(sys.executable).with_name("mtls-hooks")
    tls = ["--cert", str(tmp_path / "server.pem"), "--key", str(tmp_path / "server-key.pem")]
    tls += ["--client-ca", str(tmp_path / "ca.pem"), "--allow-any-client"]
    env = {**os.environ, "MTLS_HOOKS_DEDUPE_URL": url, "MTLS_HOOKS_KEYS": Sender().key}
    env.update({"NODE_RUNS": str(tmp_path / "runs"), "NODE_HANDLER_S": "0"})
    env.pop("MTLS_HOOKS_DEDUPE_PATH", None)
    done = subprocess.run(
        [str(cli), "serve", "tests.stores.node_app:app", *tls, "--bind", "127.0.0.1:0"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("mtls-hooks: error: dedupe store ")
    assert "127.0.0.1:1" in lines[0]
    assert "is unreachable" in lines[0]
    assert "s3cret" not in done.stderr + done.stdout
