"""``mtls-hooks outbox`` and ``mtls-hooks deliver``: the operator's verbs, one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mtls_hooks.cli._main import main
from mtls_hooks.outbox import Outbox
from mtls_hooks.queue import JobState
from tests.outbox.conftest import OutboxPki, Receiver
from tests.outbox.processes import CLI, Child, start_worker, wait_until


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def add_args(pki: OutboxPki, url: str) -> list[str]:
    return [
        "endpoint", "add", "billing", url,
        "--cert", pki.path("client.pem"), "--key", pki.path("client.key"),
        "--ca", pki.path("ca.pem"), "--pin", pki.server.spki_pin,
        "--signing-key", f"file:{pki.path('keys.txt')}",
        "--max-attempts", "1",
    ]  # fmt: skip


def test_operator_round_trip(
    pki: OutboxPki, receiver: Receiver, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"sqlite:///{tmp_path / 'q.sqlite3'}"
    assert cli(capsys, "outbox", "--store", store, *add_args(pki, receiver.url("/gone")))[0] == 0
    status, out, _ = cli(capsys, "outbox", "--store", store, "endpoint", "list")
    assert status == 0
    assert out.startswith(f"billing  {receiver.url('/gone')}  enabled  keys=file:")
    assert pki.secret not in out
    with Outbox(store) as outbox:
        message_id = outbox.enqueue("billing", {"n": 1}, event_type="invoice.paid")
    worker = start_worker(store)
    try:
        with Outbox(store) as outbox:
            wait_until(lambda: outbox.status().by_state["failed"] == 1, "the dead letter")
        assert worker.terminate() == 0
    finally:
        worker.close()
    _, out, _ = cli(capsys, "outbox", "--store", store, "status")
    assert "pending 0  running 0  done 0  failed 1" in out
    assert "endpoint billing: failed 1" in out
    _, out, _ = cli(capsys, "outbox", "--store", store, "list", "--failed")
    assert re.match(rf"{message_id}  billing  failed  attempts=1  endpoint gone \(410\)", out)
    _, out, _ = cli(capsys, "outbox", "--store", store, "show", message_id)
    assert "event_type invoice.paid" in out
    assert re.search(r"attempt #1 \S+ failed 410 [\d.]+ ms by \S+", out)
    # Fix the endpoint, replay the dead letter, deliver.
    assert cli(capsys, "outbox", "--store", store, *add_args(pki, receiver.url()))[0] == 0
    assert cli(capsys, "outbox", "--store", store, "retry", "--all-failed")[1] == (
        "requeued 1 message(s)\n"
    )
    worker = start_worker(store)
    try:
        with Outbox(store) as outbox:
            wait_until(lambda: outbox.status().by_state["done"] == 1, "the replay")
        assert worker.terminate() == 0
    finally:
        worker.close()
    assert receiver.seen()["handled"] == [message_id]
    assert cli(capsys, "outbox", "--store", store, "purge", "--older-than", "1h")[1] == (
        "purged 0 message(s)\n"
    )
    assert cli(capsys, "outbox", "--store", store, "purge", "--older-than", "0s")[1] == (
        "purged 1 message(s)\n"
    )
    assert cli(capsys, "outbox", "--store", store, "endpoint", "disable", "billing")[0] == 0
    _, out, _ = cli(capsys, "outbox", "--store", store, "endpoint", "list")
    assert "disabled (disabled by an operator)" in out
    assert cli(capsys, "outbox", "--store", store, "endpoint", "enable", "billing")[0] == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["outbox", "status"], "no store: pass --store", id="no-store"),
        pytest.param(["outbox", "--store", "sqlit:///x", "status"], "did you mean", id="scheme"),
        pytest.param(
            ["outbox", "--store", "postgresql://u:secretpw@127.0.0.1:1/db", "status"],
            r"PostgreSQL at 127\.0\.0\.1:1/db",
            id="unreachable-postgresql",
        ),
        pytest.param(["outbox", "{store}", "show", "msg_x"], "no outbox message", id="unknown-id"),
        pytest.param(
            ["outbox", "{store}", "endpoint", "enable", "nope"], "unknown endpoint", id="endpoint"
        ),
        pytest.param(["outbox", "{store}", "retry"], "retry needs", id="retry-nothing"),
        pytest.param(["outbox", "{store}", "purge", "--older-than", "a week"], "30s", id="age"),
        pytest.param(
            ["outbox", "{store}", "endpoint", "add", "x", "https://h/", "--signing-key", "whsec_x"],
            "by reference",
            id="key-text",
        ),
        pytest.param(["deliver", "--store", "sqlite:///"], "needs a file path", id="deliver"),
        pytest.param(["deliver", "{store}", "--log-level", "LOUD"], "log level", id="log-level"),
        pytest.param(["deliver", "{store}", "--concurrency", "0"], "concurrency", id="zero"),
    ],
)
def test_errors_are_one_line(
    argv: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MTLS_HOOKS_OUTBOX_STORE", raising=False)
    store = f"--store=sqlite:///{tmp_path / 'q.sqlite3'}"
    status, out, err = cli(capsys, *[store if a == "{store}" else a for a in argv])
    assert status == 1
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("mtls-hooks: error: ")
    assert re.search(message, err)
    assert "secretpw" not in err
    assert "whsec_x" not in err


def test_sigterm_releases_what_the_worker_holds(
    pki: OutboxPki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.outbox.processes import serve_receiver

    hold = tmp_path / "hold"
    hold.touch()
    store = f"sqlite:///{tmp_path / 'q.sqlite3'}"
    with serve_receiver(pki, tmp_path, hold=hold) as (base, log), Outbox(store) as outbox:
        assert cli(capsys, "outbox", "--store", store, *add_args(pki, f"{base}/hooks"))[0] == 0
        ids = [outbox.enqueue("billing", {"n": n}, event_type="t") for n in range(3)]
        worker = Child([CLI, "deliver", "--store", store, "--shutdown-grace-s", "0.2"], {})
        try:
            from tests.outbox.receiver_app import read_log

            wait_until(lambda: len(read_log(log)["entered"]) == 3, "three held requests")
            assert worker.terminate() == 0  # within the grace: the held ones are released
            worker.wait_for(r"stopped: 0 delivered, 0 retried, 0 failed, 3 released")
        finally:
            worker.close()
            hold.unlink()
        jobs = outbox.messages()
        assert [(j.id, j.state, j.attempts) for j in jobs] == [
            (i, JobState.PENDING, 0) for i in ids
        ]
