"""``mtls-hooks serve``: one-line errors, and a real server process driven by signals."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mtls_hooks.cli._main import main
from tests.serving.conftest import Cast, Pki

REPO = Path(__file__).resolve().parents[2]
APP = "tests.serving.apps:app"


def _tls_args(pki: Pki) -> list[str]:
    return ["--cert", pki.server_cert, "--key", pki.server_key, "--client-ca", pki.ca_file]


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mtls-hooks: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("app", "message"),
    [
        pytest.param(
            "no_such_module_xyz:app", "cannot import module 'no_such_module_xyz'", id="module"
        ),
        pytest.param("tests.serving.apps:nope", "has no attribute 'nope'", id="attribute"),
        pytest.param("tests.serving.apps", "must be 'module:attribute'", id="no-colon"),
    ],
)
def test_app_errors_are_one_line(
    pki: Pki, cast: Cast, capsys: pytest.CaptureFixture[str], app: str, message: str
) -> None:
    status = main(["serve", app, *_tls_args(pki), "--pin", cast.alpha.spki_pin])
    assert status == 1
    assert message in _one_error_line(capsys)


def test_no_policy_is_refused(pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", APP, *_tls_args(pki)]) == 1
    assert "--pin" in _one_error_line(capsys)


def test_config_file_typo(pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "r.toml"
    config.write_text("[server]\nworkerz = 2\n")
    assert main(["serve", APP, "--config", str(config)]) == 1
    assert "did you mean 'workers'" in _one_error_line(capsys)


class _Lines:
    """Reads a pipe line by line in a thread, so waits on it can be bounded."""

    def __init__(self, stream: object) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.queue.put(line)

    def wait_for(self, pattern: str, timeout_s: float = 20.0) -> re.Match[str]:
        while True:
            line = self.queue.get(timeout=timeout_s)
            match = re.search(pattern, line)
            if match:
                return match


@pytest.fixture
def cli_server(pki: Pki, cast: Cast) -> Iterator[tuple[subprocess.Popen[str], _Lines]]:
    args = [*_tls_args(pki), "--pin", cast.alpha.spki_pin, "--bind", "127.0.0.1:0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtls_hooks.cli._main", "serve", APP, *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert proc.stderr is not None
    lines = _Lines(proc.stderr)
    try:
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        proc.stderr.close()
        lines.thread.join(5)


@pytest.mark.slow
def test_cli_serves_reloads_and_stops(
    cli_server: tuple[subprocess.Popen[str], _Lines], pki: Pki, cast: Cast
) -> None:
    proc, lines = cli_server
    port = int(lines.wait_for(r"Running on https://127\.0\.0\.1:(\d+)").group(1))
    url = f"https://127.0.0.1:{port}/whoami"
    with httpx.Client(verify=pki.context(cast.alpha)) as client:
        assert client.get(url).json()["subject"] == "CN=alpha"
    with httpx.Client(verify=pki.context(cast.beta)) as client, pytest.raises(httpx.TransportError):
        client.get(url)
    lines.wait_for(r"event=handshake_refused peer=127\.0\.0\.1:\d+ reason=unpinned")

    proc.send_signal(signal.SIGHUP)
    lines.wait_for(r"event=reloaded pid=\d+ generation=1")

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
