"""Every code block in the README runs in a test or is taken from an example that does.

A block is preceded by a marker comment saying which:

* ``<!-- snippet: PATH -->``: the block is a contiguous excerpt of PATH (an example, which
  tests/test_examples.py runs);
* ``<!-- run -->``: a console session; each ``$ `` command runs, in order, in a scratch
  directory with this virtualenv's scripts on PATH, and must exit 0;
* ``<!-- make-targets -->``: each ``make TARGET`` line names a Makefile target that
  ``make -n`` accepts.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"(?:<!-- (?P<marker>[^>]*?) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)\n```", re.S)


def blocks() -> list[tuple[str, str]]:
    """Return ``(marker, body)`` for every fenced block, marker ``""`` when missing."""
    return [(m["marker"] or "", m["body"]) for m in BLOCK.finditer(README)]


def _normalise(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip("\n").splitlines()]


def test_every_block_has_a_marker() -> None:
    unmarked = [body.splitlines()[0] for marker, body in blocks() if not marker]
    assert not unmarked, f"README blocks without a test marker: {unmarked}"


@pytest.mark.parametrize(
    "path_and_body",
    [
        pytest.param((m.removeprefix("snippet: "), body), id=m.removeprefix("snippet: "))
        for m, body in blocks()
        if m.startswith("snippet: ")
    ],
)
def test_snippets_are_excerpts_of_tested_examples(path_and_body: tuple[str, str]) -> None:
    path, body = path_and_body
    source = _normalise((ROOT / path).read_text(encoding="utf-8"))
    excerpt = _normalise(body)
    starts = [i for i, line in enumerate(source) if line == excerpt[0]]
    assert any(source[i : i + len(excerpt)] == excerpt for i in starts), (
        f"README block is not an excerpt of {path}"
    )


def test_console_sessions_run(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    sessions = [body for marker, body in blocks() if marker == "run"]
    assert sessions
    for body in sessions:
        for line in body.splitlines():
            if not line.startswith("$ "):
                continue
            command = line[2:]
            done = subprocess.run(
                ["bash", "-c", command],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                stdin=subprocess.DEVNULL,
            )
            assert done.returncode == 0, f"{command}: {done.stderr}"


def test_make_targets_exist() -> None:
    targets = [
        shlex.split(line)[1]
        for marker, body in blocks()
        if marker == "make-targets"
        for line in body.splitlines()
    ]
    assert targets == ["demo", "test"]
    for target in targets:
        done = subprocess.run(
            ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
