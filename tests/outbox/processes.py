"""Real processes for the durability tests: ``mtls-hooks serve`` and ``mtls-hooks deliver``.

Each is started with its output read on a thread (every wait bounded) and stopped by PID.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.outbox.conftest import OutboxPki

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("mtls-hooks"))


class Child:
    """A child process whose output lines are collected by a thread."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            # Its own process group: close() can stop the workers a `serve --workers N`
            # spawned, which would otherwise outlive a failed test holding the output pipe.
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout_s: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(queue.Empty):
                if match := re.search(pattern, self.lines.get(timeout=left)):
                    return match
            if self.proc.poll() is not None and self.lines.empty():
                break
        pytest.fail(f"no line matched {pattern!r}; output:\n{''.join(self.output)[-3000:]}")

    def kill(self) -> None:
        """``kill -9``: no cleanup of any kind."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            pytest.fail(f"pid {self.proc.pid} ignored SIGTERM for {timeout_s} s")

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # the group may be gone already
            os.killpg(self.proc.pid, signal.SIGKILL)  # the child and whatever it spawned
        if self.proc.poll() is None:
            self.proc.wait(10)
        assert self.proc.stdout is not None
        self._thread.join(5)
        self.proc.stdout.close()


@contextlib.contextmanager
def serve_receiver(
    pki: OutboxPki, tmp_path: Path, *, hold: Path | None = None, handle_s: float = 0.0
) -> Iterator[tuple[str, Path]]:
    """``mtls-hooks serve tests.outbox.receiver_app:app`` with SQLite dedupe; yields
    ``(base URL, log path)``."""
    log = tmp_path / "receiver.log"
    env = {
        "OUTBOX_TEST_SECRET": pki.secret,
        "OUTBOX_TEST_LOG": str(log),
        "OUTBOX_TEST_HANDLE_S": str(handle_s),
        "MTLS_HOOKS_DEDUPE_PATH": str(tmp_path / "dedupe.sqlite3"),
    }
    if hold is not None:
        env["OUTBOX_TEST_HOLD"] = str(hold)
    tls = ["--cert", pki.path("server.pem"), "--key", pki.path("server.key")]
    tls += ["--client-ca", pki.path("ca.pem"), "--pin", pki.client.spki_pin]
    argv = [CLI, "serve", "tests.outbox.receiver_app:app", *tls, "--bind", "127.0.0.1:0"]
    child = Child(argv, env)
    try:
        port = child.wait_for(r"Running on https://127\.0\.0\.1:(\d+)").group(1)
        yield f"https://localhost:{port}", log
        assert child.terminate() == 0
    finally:
        child.close()


def start_worker(store_url: str, *extra: str) -> Child:
    """``mtls-hooks deliver``, waited for until it says it runs."""
    argv = [CLI, "deliver", "--store", store_url, "--poll-interval-s", "0.2", *extra]
    child = Child(argv, {})
    child.wait_for(r"mtls-hooks deliver: worker \S+ on ")
    return child


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = 90.0) -> None:
    """Poll a state with a deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample a ``--metrics-bind`` listener on 127.0.0.1 serves, by name and labels."""
    import http.client

    from prometheus_client.parser import text_string_to_metric_families

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        text = response.read().decode()
    finally:
        conn.close()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
