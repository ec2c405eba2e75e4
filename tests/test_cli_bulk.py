"""``mtls-hooks send URL --file events.jsonl``: a real receiver, progress, summary, bad lines."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from quart import Quart

from certs_tool import CA
from mtls_hooks.cli._bulk import read_events
from mtls_hooks.cli._main import main
from mtls_hooks.core._events import WebhookEvent
from mtls_hooks.core._signing import HmacSecret
from mtls_hooks.receiver._receiver import WebhookReceiver
from mtls_hooks.testing import ServerHandle, running_server
from tests.serving.conftest import Identity, Pki

SECRET = HmacSecret.generate().export()


@dataclass
class Seen:
    ids: list[str] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Live:
    server: ServerHandle
    pki: Pki
    client: Identity
    seen: Seen

    def argv(self, events: Path, *extra: str) -> list[str]:
        return ["send", self.server.url("/hooks"), "--cert", self.client.cert, "--key",
                self.client.key, "--ca", self.pki.ca_file, "--secret-env", "BULK_SECRET",
                "--file", str(events), *extra]  # fmt: skip


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, certs_ca: CA) -> Iterator[Live]:
    pki = Pki.create(tmp_path_factory.mktemp("bulk-pki"), certs_ca)
    client = pki.identity("bulk-sender")
    seen = Seen()
    app = Quart(__name__)
    app.config["MTLS_HOOKS_KEYS"] = [SECRET]
    hooks = WebhookReceiver(app)
    bulk = hooks.endpoint("/hooks", name="bulk")

    @bulk.on_any
    async def record(event: WebhookEvent) -> None:
        with seen.lock:
            seen.ids.append(event.id)
            seen.numbers.append(int(event.payload["n"]))

    with running_server(app, pki.config(client)) as server:
        yield Live(server, pki, client, seen)


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULK_SECRET", SECRET)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def test_thousand_events_from_a_file_each_handled_once(
    live: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = len(live.seen.ids)
    events = _write(
        tmp_path / "events.jsonl", [json.dumps({"type": "bulk.test", "n": n}) for n in range(1000)]
    )
    assert main(live.argv(events, "--concurrency", "16")) == 0
    new_numbers = sorted(live.seen.numbers[before:])
    assert new_numbers == list(range(1000))
    assert len(set(live.seen.ids[before:])) == 1000  # a webhook-id of its own per event
    captured = capsys.readouterr()
    # Not a terminal: plain progress lines, one per tenth, then the summary table.
    progress = [line for line in captured.err.splitlines() if line.startswith("progress:")]
    assert len(progress) == 10
    assert progress[-1].startswith("progress: 1000/1000 sent (1000 delivered, 0 failed)")
    assert "delivered" in captured.out
    assert "1000" in captured.out


def test_malformed_line_stops_the_run_before_anything_is_sent(
    live: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = len(live.seen.ids)
    events = _write(
        tmp_path / "events.jsonl",
        ['{"type": "t", "n": 1}', '{"type": "t", "n": 2', '{"type": "t", "n": 3}'],
    )
    assert main(live.argv(events)) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{events}:2: not JSON:")
    assert err[-1] == (
        f"mtls-hooks: error: 1 malformed line(s) in {events}, first at line 2; "
        "nothing was sent (--skip-bad-lines sends the others)"
    )
    assert len(live.seen.ids) == before


def test_skip_bad_lines_sends_the_others_and_reports_each(
    live: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = len(live.seen.ids)
    lines = [
        '{"type": "t", "n": 10}',
        "not json",
        "",
        '{"type": "t", "n": 11}',
        "[1,",
        '{"type": "t", "n": 12}',
    ]
    events = _write(tmp_path / "events.jsonl", lines)
    assert main(live.argv(events, "--skip-bad-lines")) == 0
    assert sorted(live.seen.numbers[before:]) == [10, 11, 12]
    captured = capsys.readouterr()
    reported = [line.split(":")[1] for line in captured.err.splitlines() if "not JSON" in line]
    assert reported == ["2", "5"]
    assert "skipped (malformed)" in captured.out


def test_failures_are_counted_and_exit_non_zero(
    live: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = _write(tmp_path / "events.jsonl", ['{"type": "t", "n": 1}', '{"type": "t", "n": 2}'])
    argv = live.argv(events, "--max-attempts", "1")
    argv[1] = live.server.url("/nowhere")  # a 404: every event fails, without retries
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "failed: StatusError 404" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param(["--data", "{}"], "--file sends its own lines", id="with-data"),
        pytest.param(["--id", "msg_1"], "--file sends its own lines", id="with-id"),
        pytest.param(["--concurrency", "0"], "--concurrency must be >= 1", id="no-concurrency"),
    ],
)
def test_conflicting_flags_are_one_line(
    live: Live,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    events = _write(tmp_path / "events.jsonl", ['{"type": "t", "n": 1}'])
    assert main([*live.argv(events), *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert message in err[0]


def test_missing_file_is_one_line(
    live: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(live.argv(tmp_path / "absent.jsonl")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"mtls-hooks: error: cannot read {tmp_path / 'absent.jsonl'}: No such file or directory"
    ]


def test_lines_are_sent_byte_for_byte_unless_wrapped(tmp_path: Path) -> None:
    events = _write(tmp_path / "e.jsonl", ['{ "n" :  1 }'])
    raw, _ = read_events(str(events), wrap=False)
    wrapped, _ = read_events(str(events), wrap=True)
    assert raw == [(1, b'{ "n" :  1 }')]
    assert wrapped == [(1, {"n": 1})]


def test_progress_on_a_terminal_uses_a_bar(tmp_path: Path) -> None:
    from mtls_hooks.cli._bulk import BulkSummary, _Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    with _Progress(3, stream) as progress:
        for _ in range(3):
            progress.advance(BulkSummary())
    assert "progress:" not in stream.getvalue()  # the bar, not the plain lines
