"""``mtls-hooks outbox status --watch``: in place on a terminal, plain snapshots elsewhere."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
from pathlib import Path

import pytest

from mtls_hooks.outbox import Outbox
from tests.outbox.conftest import OutboxPki
from tests.outbox.processes import CLI, REPO

HEADER = "--- outbox status at "
# rich's Live redraws by moving the cursor up over the previous table and erasing lines.
CURSOR_UP = "\x1b[1A"
ERASE_LINE = "\x1b[2K"


@pytest.fixture
def store(pki: OutboxPki, tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'outbox.sqlite3'}"
    with Outbox(url) as outbox:
        outbox.add_endpoint(pki.endpoint("billing", "https://localhost:9/hooks"))
        for n in range(2):
            outbox.enqueue("billing", {"n": n})
    return url


def watch(store: str, *extra: str) -> list[str]:
    return [CLI, "outbox", "--store", store, "status", "--watch", "--interval", "0.05", *extra]


def test_plain_snapshots_when_not_a_terminal(store: str) -> None:
    done = subprocess.run(watch(store, "--count", "3"), capture_output=True, text=True,
                          cwd=REPO, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3 * 4  # three readings of four lines, one after the other
    for reading in (lines[0:4], lines[4:8], lines[8:12]):
        assert reading[0].startswith(HEADER)
        assert reading[1] == "pending 2  running 0  done 0  failed 0"
        assert reading[2] == "endpoint billing: pending 2"
        assert reading[3].startswith("oldest due message: ")
        assert reading[3].endswith(" s")
    assert "\x1b" not in done.stdout  # no terminal codes in a log or a pipe


def run_in_pty(argv: list[str], timeout_s: float = 60.0) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal as stdout and stderr; return (status, output)."""
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "40"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
                            cwd=REPO, env=env, close_fds=True)  # fmt: skip
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        return proc.wait(10), b"".join(chunks).decode(errors="replace")
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_refreshes_in_place_on_a_terminal(store: str) -> None:
    status, output = run_in_pty(watch(store, "--count", "3"))
    assert status == 0, output
    # Three readings, each table drawn over the last: the cursor goes back up and erases.
    # (Live draws the last one once more as it stops.)
    drawn = output.count("outbox status at ")
    assert drawn in (3, 4)
    assert output.count("billing") == drawn
    assert output.count(CURSOR_UP) >= 2 * 6  # at least two redraws of a 6+ line table
    assert ERASE_LINE in output
    assert HEADER not in output  # not the plain snapshots
    assert "oldest due message:" in output


def test_plain_status_without_watch_is_one_reading(store: str) -> None:
    done = subprocess.run([CLI, "outbox", "--store", store, "status"], capture_output=True,
                          text=True, cwd=REPO, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert HEADER not in done.stdout
    assert done.stdout.splitlines()[0] == "pending 2  running 0  done 0  failed 0"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--count", "0"], "--count must be at least 1"),
        (["--interval", "0"], "--interval must be a positive number"),
        (["--interval", "nan"], "--interval must be a positive number"),
    ],
)
def test_bad_watch_flags_are_one_line(store: str, flags: list[str], message: str) -> None:
    argv = [CLI, "outbox", "--store", store, "status", "--watch", *flags]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=60,
                          check=False)  # fmt: skip
    assert done.returncode == 1
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1
    assert message in done.stderr
