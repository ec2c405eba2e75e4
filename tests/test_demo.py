"""`make demo` runs examples/demo.py: it must tell its story and exit 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_tells_the_whole_story_and_exits_zero() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "examples.demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "every expectation held" in out
    assert "FAIL" not in out
    for expected in (
        "reason=unpinned",
        "reason=no-certificate",
        "answered 401 application/problem+json",
        "handler ran 1 time(s)",
        "receiver stopped by PID (exit status 0)",
    ):
        assert expected in out, expected
