"""Inbox mode end to end over real mTLS: ``mtls-hooks serve`` with its own inbox worker
(``MTLS_HOOKS_INBOX_CONCURRENCY`` > 0) stores signed events, answers 202 and runs their
handlers, which see the sender's certificate identity; the failing twins over the same
server store nothing. Then ``serve --workers 2`` (one worker per process on one inbox), and
a start-up against an unreachable PostgreSQL inbox.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import httpx
import pytest

from mtls_hooks import (
    DeliveryError,
    HmacSecret,
    Inbox,
    StatusError,
    WebhookMessage,
)
from tests.inbox.inbox_app import read_records
from tests.inbox.processes import CLI, SPIFFE_SENDER, RealPki, serve, wait_until
from tests.outbox.processes import REPO
from tests.receiver.conftest import Sender

MAX_BODY_BYTES = 4096


def completed_ids(records: Path) -> list[str]:
    return [r.webhook_id for r in read_records(records) if r.kind == "completed"]


def padded_body(size: int) -> bytes:
    """A JSON event body of exactly ``size`` bytes."""
    empty = json.dumps({"type": "order.paid", "data": {"pad": ""}}).encode()
    body = json.dumps({"type": "order.paid", "data": {"pad": "x" * (size - len(empty))}})
    assert len(body) == size
    return body.encode()


def test_the_servers_own_worker_handles_what_it_stored_and_refusals_store_nothing(
    real_pki: RealPki, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'inbox.sqlite3'}"
    records = tmp_path / "records.log"
    signer = Sender(HmacSecret.parse(real_pki.secret))
    settings = {"inbox_concurrency": 2, "max_body_bytes": MAX_BODY_BYTES}
    with (
        serve(real_pki, url, records, **settings) as node,
        Inbox(url) as inbox,
        real_pki.sender() as sender,
        httpx.Client(verify=real_pki.context(), timeout=20) as client,
    ):
        accepted = [sender.send(node.url, {"n": n}, event_type="order.paid") for n in range(5)]
        assert {tuple(a.status_code for a in r.attempts) for r in accepted} == {(202,)}
        ids = [r.webhook_id for r in accepted]
        # The body cap's boundary: exactly the cap is stored.
        body, headers = signer.request(body=padded_body(MAX_BODY_BYTES))
        assert client.post(node.url, content=body, headers=headers).status_code == 202
        ids.append(headers["webhook-id"])
        # A retried delivery (same id, same bytes) is stored once: 202 duplicate.
        body, replayed = signer.request(payload={"type": "order.paid", "data": {"n": "r"}})
        answers = [client.post(node.url, content=body, headers=replayed) for _ in range(2)]
        ids.append(replayed["webhook-id"])
        wait_until(lambda: sorted(completed_ids(records)) == sorted(ids), "handled", timeout_s=30)
        late = client.post(node.url, content=body, headers=replayed)  # after it was handled

        # The failing twins, over the same server.
        # Unpinned: refused in the handshake (TLS 1.3 shows the client a dropped connection).
        with pytest.raises(DeliveryError) as unpinned, real_pki.sender("stranger") as stranger:
            stranger.send(node.url, {"n": "stranger"}, event_type="order.paid")
        other = HmacSecret.generate().export()
        with pytest.raises(StatusError) as bad, real_pki.sender(secret=other) as forger:
            forger.send(node.url, {"n": "forged"}, event_type="order.paid")
        body, headers = signer.request(body=padded_body(MAX_BODY_BYTES + 1))
        oversized = client.post(node.url, content=body, headers=headers)
        stored = sorted(job.meta["webhook_id"] for job in inbox.messages(limit=100))
        seen = read_records(records)

    assert [(a.status_code, a.headers.get("Webhook-Duplicate")) for a in answers] == [
        (202, None),
        (202, "true"),
    ]
    assert (late.status_code, late.headers.get("Webhook-Duplicate")) == (202, "true")
    assert not isinstance(unpinned.value, StatusError)
    assert unpinned.value.result is not None
    assert unpinned.value.result.attempts[-1].status_code is None  # no HTTP answer at all
    assert bad.value.status_code == 401
    assert oversized.status_code == 413
    assert stored == sorted(ids)  # nothing refused was stored
    completed = [r for r in seen if r.kind == "completed"]
    assert max(Counter(r.webhook_id for r in completed).values()) == 1
    # The server's own worker ran them (no process-inbox here), as the certificate's peer.
    assert {r.pid for r in completed} == {node.child.proc.pid}
    assert {r.peer for r in completed} == {SPIFFE_SENDER}


def test_serve_with_two_workers_handles_each_event_once(real_pki: RealPki, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'inbox.sqlite3'}"
    records = tmp_path / "records.log"
    with (
        serve(real_pki, url, records, "--workers", "2", inbox_concurrency=4) as node,
        Inbox(url) as inbox,
        real_pki.sender() as sender,
    ):
        node.child.wait_for(r"Running on https://127\.0\.0\.1:")  # the second worker too
        messages = [WebhookMessage(node.url, {"n": n}, "order.paid") for n in range(50)]
        results = sender.send_many(messages, concurrency=8)
        ids = sorted(r.webhook_id for r in results)
        wait_until(lambda: len(completed_ids(records)) >= 50, "50 handled", timeout_s=30)
        wait_until(lambda: inbox.status().by_state["done"] == 50, "50 settled", timeout_s=30)
        by_state = dict(inbox.status().by_state)
    assert {tuple(a.status_code for a in r.attempts) for r in results} == {(202,)}
    assert sorted(completed_ids(records)) == ids  # each once, whichever worker ran it
    assert by_state == {"pending": 0, "running": 0, "done": 50, "failed": 0}


@pytest.mark.parametrize("command", ["serve", "process-inbox"])
def test_an_unreachable_postgresql_inbox_at_start_up_is_a_one_line_error(
    command: str, real_pki: RealPki, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "MTLS_HOOKS_INBOX_URL": "postgresql://hooks:s3cret@127.0.0.1:1/x",
        "MTLS_HOOKS_KEYS": real_pki.secret,
        "INBOX_TEST_RECORDS": str(tmp_path / "records.log"),
    }
    argv = [CLI, command, "tests.inbox.inbox_app:app"]
    if command == "serve":
        argv += [*real_pki.serve_args(), "--bind", "127.0.0.1:0"]
    done = subprocess.run(
        argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("mtls-hooks: error: ")
    assert lines[0].startswith(
        "mtls-hooks: error: inbox store: cannot use PostgreSQL at 127.0.0.1:1"
    )
    assert "s3cret" not in done.stderr + done.stdout
    assert "Traceback" not in done.stdout
