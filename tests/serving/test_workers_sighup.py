"""SIGHUP while workers start up: held until each worker can reload, never fatal.

A SIGHUP used to reach a spawned worker before its reload handler existed; the default
action killed it, and the supervisor then shut everything down (exit 1). Workers are now
born with SIGHUP blocked and unblock it once ready, so the signal becomes one reload.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import Cast, Pki
from tests.serving.test_cli_serve import APP, REPO, _Lines, _tls_args

WORKERS = 2
START_TIMEOUT_S = 30.0


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


@contextlib.contextmanager
def _supervisor(pki: Pki, cast: Cast) -> Iterator[tuple[subprocess.Popen[str], _Lines, set[int]]]:
    args = [*_tls_args(pki), "--pin", cast.alpha.spki_pin, "--bind", "127.0.0.1:0"]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mtls_hooks.cli._main",
            "serve",
            APP,
            *args,
            "--workers",
            str(WORKERS),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
        start_new_session=True,  # its own process group, for the hang-up case
    )
    assert proc.stderr is not None
    lines = _Lines(proc.stderr)
    seen: set[int] = set()  # every child PID observed, to stop each one by PID at the end
    try:
        yield proc, lines, seen
    finally:
        seen.update(_children(proc.pid))
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for pid in seen:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)  # only a leftover: a clean exit reaped them
        proc.stderr.close()
        lines.thread.join(5)


def _is_worker(pid: int) -> bool:
    # multiprocessing's resource tracker is a child too; a spawned worker runs spawn_main.
    with contextlib.suppress(OSError):
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return False


def _first_worker_spawned(proc: subprocess.Popen[str], seen: set[int]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        children = _children(proc.pid)
        seen.update(children)
        if any(_is_worker(child) for child in children):
            return
        time.sleep(0.005)
    pytest.fail("the supervisor spawned no worker")


def _to_supervisor(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGHUP)


def _to_process_group(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, signal.SIGHUP)  # a terminal hang-up reaches every process


@pytest.mark.slow
@pytest.mark.parametrize(
    "send",
    [
        pytest.param(_to_supervisor, id="sighup-to-supervisor"),
        pytest.param(_to_process_group, id="sighup-to-process-group"),
    ],
)
def test_sighup_during_worker_startup_reloads_instead_of_killing(
    pki: Pki, cast: Cast, send: Callable[[subprocess.Popen[str]], None]
) -> None:
    with _supervisor(pki, cast) as (proc, lines, seen):
        _first_worker_spawned(proc, seen)
        send(proc)  # the worker is still importing: no handler of its own yet
        port = int(lines.wait_for(r"Running on https://127\.0\.0\.1:(\d+)", START_TIMEOUT_S)[1])
        lines.wait_for(r"event=reloaded pid=\d+ generation=1", START_TIMEOUT_S)
        assert proc.poll() is None, "the SIGHUP stopped the server"
        with httpx.Client(verify=pki.context(cast.alpha), timeout=10.0) as client:
            response = client.get(f"https://127.0.0.1:{port}/whoami")
        assert response.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
