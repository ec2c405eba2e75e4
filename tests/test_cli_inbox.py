"""``mtls-hooks inbox`` (the outbox's operator verbs on a receiver's inbox) and the one-line
errors of ``mtls-hooks process-inbox``.

The inbox is filled by a real receiver app through Quart's test client (so each event carries
the sender's verified certificate identity) or by ``Inbox.accept``; an ``InboxWorker`` whose
handler raises makes the dead letter; then the CLI is driven through ``main([...])``.
"""

from __future__ import annotations

import json
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_asyncio
from cryptography import x509
from quart import Quart
from quart.testing import QuartClient
from tenacity import stop_after_attempt

from certs_tool import CA, IssuedCert
from mtls_hooks.cli._main import main
from mtls_hooks.core._events import WebhookEvent
from mtls_hooks.core._identity import PeerIdentity
from mtls_hooks.inbox import Inbox, InboxRetry, InboxWorker
from mtls_hooks.queue import JobState, open_store
from mtls_hooks.queue._protocol import NewJob
from mtls_hooks.receiver._receiver import WebhookReceiver
from tests.queue.conftest import pg_schema
from tests.receiver.conftest import Sender, tls_scope

SPIFFE_ID = "spiffe://test.example/payments/sender"
# In every body: the CLI shows an event's size, never its content.
BODY_MARKER = "card-4242-never-shown"
STORE_ENV = "MTLS_HOOKS_INBOX_URL"


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(answer: tuple[int, str, str], message: str) -> None:
    """Exit status 1, nothing on stdout, one line on stderr matching ``message``."""
    status, out, err = answer
    assert (status, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith("mtls-hooks: error: ")
    assert re.search(message, err), err


@pytest.fixture(autouse=True)
def _no_inbox_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # --store defaults to it, and the receiver reads it beneath app.config.
    monkeypatch.delenv(STORE_ENV, raising=False)


@pytest.fixture(scope="module")
def signer() -> Sender:
    return Sender()


@pytest.fixture(scope="module")
def peer_cert(certs_ca: CA) -> IssuedCert:
    return certs_ca.issue_client("payments", uris=[SPIFFE_ID])


@dataclass
class Failing:
    """A handler that raises for the webhook ids in ``ids`` and records the others."""

    ids: set[str] = field(default_factory=set)
    handled: list[str] = field(default_factory=list)

    async def handler(self, event: WebhookEvent) -> None:
        if event.id in self.ids:
            raise RuntimeError("ledger unavailable")
        self.handled.append(event.id)


@dataclass
class Rig:
    app: Quart
    hooks: WebhookReceiver
    client: QuartClient
    signer: Sender
    scope: dict[str, Any]
    failing: Failing
    url: str

    async def deliver(self) -> tuple[str, bytes, dict[str, str]]:
        """Post one signed event; return its webhook-id, body and headers."""
        body, headers = self.signer.request({"type": "invoice.paid", "data": {"card": BODY_MARKER}})
        response = await self.client.post(
            "/hooks", data=body, headers=headers, scope_base=self.scope
        )
        assert response.status_code == 202
        return headers["webhook-id"], body, headers

    async def work(self) -> InboxWorker:
        """Run the handlers of everything due, then return the worker (for its id)."""
        worker = self.hooks.inbox_worker(self.app, poll_interval_s=0.01)
        await worker.run(until_idle=True)
        return worker


@pytest_asyncio.fixture
async def rig(signer: Sender, peer_cert: IssuedCert, tmp_path: Path) -> AsyncIterator[Rig]:
    url = f"sqlite:///{tmp_path / 'inbox.sqlite3'}"
    app = Quart("cli_inbox_app")
    # One attempt: a handler that raises goes straight to the dead letter.
    app.config.update(
        MTLS_HOOKS_INBOX_URL=url, MTLS_HOOKS_INBOX_CONCURRENCY=0, MTLS_HOOKS_INBOX_MAX_ATTEMPTS=1
    )
    hooks = WebhookReceiver(app, path="/hooks", name="payments", keys=[signer.key], mode="inbox")
    failing = Failing()
    hooks.on("invoice.paid")(failing.handler)
    async with app.test_app() as test_app:
        client = cast(QuartClient, test_app.test_client())
        yield Rig(app, hooks, client, signer, tls_scope(peer_cert), failing, url)


def job_ids_by_webhook_id(url: str) -> dict[str, str]:
    with Inbox(url) as inbox:
        return {str(job.meta["webhook_id"]): job.id for job in inbox.messages()}


@pytest.mark.asyncio
async def test_operator_round_trip(
    rig: Rig, peer_cert: IssuedCert, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ["inbox", "--store", rig.url]
    first, second, third = [(await rig.deliver())[0] for _ in range(3)]
    handled, _, _ = await rig.deliver()
    rig.failing.ids = {first, second, third}
    worker = await rig.work()
    assert rig.failing.handled == [handled]
    jobs = job_ids_by_webhook_id(rig.url)

    status, out, err = cli(capsys, *store, "status")
    assert (status, err) == (0, "")
    assert out == (
        "pending 0  running 0  done 1  failed 3\n"
        "endpoint payments: done 1, failed 3\n"
        "oldest due event: none\n"
    )

    _, out, _ = cli(capsys, *store, "list")
    lines = out.splitlines()
    assert len(lines) == 4
    for line, webhook_id in zip(lines, [first, second, third, handled], strict=True):
        assert line.startswith(f"{jobs[webhook_id]}  {webhook_id}  payments  ")
    assert lines[3] == f"{jobs[handled]}  {handled}  payments  done  attempts=1"
    _, out, _ = cli(capsys, *store, "list", "--failed")
    assert out.splitlines() == [
        f"{jobs[w]}  {w}  payments  failed  attempts=1  "
        "gave up after 1 attempt(s): RuntimeError: ledger unavailable"
        for w in (first, second, third)
    ]
    assert cli(capsys, *store, "list", "--endpoint", "other")[1] == ""
    assert len(cli(capsys, *store, "list", "--limit", "2")[1].splitlines()) == 2

    status, out, _ = cli(capsys, *store, "show", jobs[first])
    assert status == 0
    identity = PeerIdentity.from_certificate(
        x509.load_pem_x509_certificate(peer_cert.cert_pem.bytes())
    )
    head = out.splitlines()[:7]
    assert head == [
        f"id {jobs[first]}",
        "endpoint payments",
        "state failed",
        "event_type invoice.paid",
        f"webhook_id {first}",
        f"peer {identity.subject}",
        f"spiffe_id {SPIFFE_ID}",
    ]
    assert re.search(r"^created \S+Z  next \S+Z$", out, re.M)
    assert re.search(r"^bytes \d+$", out, re.M)
    assert re.search(
        rf"^attempt #1 \S+Z failed RuntimeError [\d.]+ ms by {re.escape(worker.worker_id)}  "
        r"gave up after 1 attempt\(s\): RuntimeError: ledger unavailable$",
        out,
        re.M,
    )
    assert BODY_MARKER not in out

    # Replay by id, by endpoint, then everything failed; the worker handles each replay.
    assert cli(capsys, *store, "retry", jobs[first])[1] == "requeued 1 event(s)\n"
    rig.failing.ids = {third}
    await rig.work()
    assert rig.failing.handled == [handled, first]
    assert cli(capsys, *store, "retry", "--endpoint", "payments")[1] == "requeued 2 event(s)\n"
    await rig.work()  # second is handled, third fails again
    assert rig.failing.handled == [handled, first, second]
    rig.failing.ids = set()
    assert cli(capsys, *store, "retry", "--all-failed")[1] == "requeued 1 event(s)\n"
    await rig.work()
    assert rig.failing.handled == [handled, first, second, third]
    _, out, _ = cli(capsys, *store, "show", jobs[third])
    assert [line.split()[3] for line in out.splitlines() if line.startswith("attempt #")] == [
        "failed",
        "failed",
        "done",
    ]
    assert re.search(r"^attempt #3 \S+Z done - [\d.]+ ms by \S+$", out, re.M)
    assert cli(capsys, *store, "retry", "--all-failed")[1] == "requeued 0 event(s)\n"
    assert cli(capsys, *store, "status")[1].startswith("pending 0  running 0  done 4  failed 0\n")

    # Purge: nothing is that old yet; then everything, and a purged id is forgotten.
    assert cli(capsys, *store, "purge", "--older-than", "1h")[1] == "purged 0 event(s)\n"
    assert cli(capsys, *store, "purge", "--older-than", "0s")[1] == "purged 4 event(s)\n"
    assert cli(capsys, *store, "list")[1] == ""


@pytest.mark.asyncio
async def test_a_purged_id_is_forgotten_as_purge_says(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    webhook_id, body, headers = await rig.deliver()
    await rig.work()
    again = await rig.client.post("/hooks", data=body, headers=headers, scope_base=rig.scope)
    assert again.headers.get("Webhook-Duplicate") == "true"  # kept: still known
    assert cli(capsys, "inbox", "--store", rig.url, "purge", "--older-than", "0s")[0] == 0
    late = await rig.client.post("/hooks", data=body, headers=headers, scope_base=rig.scope)
    assert (late.status_code, late.headers.get("Webhook-Duplicate")) == (202, None)
    await rig.work()
    assert rig.failing.handled == [webhook_id, webhook_id]  # handled again, as the help warns
    with pytest.raises(SystemExit):
        main(["inbox", "purge", "--help"])
    helped = " ".join(capsys.readouterr().out.split())
    assert "A purged event's webhook-id is forgotten: a sender's late retry" in helped
    assert "stored and handled again" in helped


@pytest.mark.asyncio
async def test_status_reads_the_receivers_variable_and_watches(
    rig: Rig, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    await rig.deliver()
    monkeypatch.setenv(STORE_ENV, rig.url)
    status, out, _ = cli(capsys, "inbox", "status")
    assert status == 0
    assert out.startswith("pending 1  running 0  done 0  failed 0\nendpoint payments: pending 1\n")
    assert re.search(r"^oldest due event: [\d.]+ s$", out, re.M)
    status, out, _ = cli(capsys, "inbox", "status", "--watch", "--interval", "0.01", "--count", "2")
    assert status == 0
    lines = out.splitlines()
    assert len(lines) == 2 * 4
    assert lines[0].startswith("--- inbox status at ")
    assert lines[4].startswith("--- inbox status at ")
    assert lines[1] == lines[5] == "pending 1  running 0  done 0  failed 0"


@pytest.mark.asyncio
async def test_postgresql_inbox_dead_letter_and_replay(capsys: pytest.CaptureFixture[str]) -> None:
    with pg_schema() as url:
        inbox = Inbox(url)
        now = int(time.time())
        ids = [f"msg_pg{n}" for n in range(3)]
        for webhook_id in ids:
            body = json.dumps({"type": "order.placed", "data": BODY_MARKER}).encode()
            event = WebhookEvent(webhook_id, "order.placed", now, json.loads(body), body, None,
                                 "orders")  # fmt: skip
            assert await inbox.accept(event)
        await inbox.aclose()
        failing = Failing(ids={"msg_pg1"})
        retry = InboxRetry(stop=stop_after_attempt(1))

        async def work() -> None:
            worker = InboxWorker(url, {("orders", None): failing.handler}, retry=retry,
                                 poll_interval_s=0.01)  # fmt: skip
            try:
                await worker.run(until_idle=True)
            finally:
                worker.store.close()

        await work()
        store = ["inbox", "--store", url]
        _, out, _ = cli(capsys, *store, "status")
        assert out.startswith("pending 0  running 0  done 2  failed 1\n")
        _, out, _ = cli(capsys, *store, "list", "--failed")
        job_id, webhook_id, endpoint, state = out.split()[:4]
        assert (webhook_id, endpoint, state) == ("msg_pg1", "orders", "failed")
        _, out, _ = cli(capsys, *store, "show", job_id)
        assert "webhook_id msg_pg1\npeer -\n" in out  # stored without a client certificate
        assert BODY_MARKER not in out
        failing.ids = set()
        assert cli(capsys, *store, "retry", "--all-failed")[1] == "requeued 1 event(s)\n"
        await work()
        assert sorted(failing.handled) == ids
        assert cli(capsys, *store, "purge", "--older-than", "0s")[1] == "purged 3 event(s)\n"


def test_show_survives_a_row_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'inbox.sqlite3'}"
    store = open_store(url)
    try:
        job_id, _ = store.enqueue(NewJob("inbox", "payments", b"{}", meta={}))
    finally:
        store.close()
    status, out, _ = cli(capsys, "inbox", "--store", url, "show", job_id)
    assert status == 0
    assert "event_type -\nwebhook_id -\npeer unreadable\n" in out
    assert cli(capsys, "inbox", "--store", url, "list")[1] == (
        f"{job_id}  -  payments  {JobState.PENDING.value}  attempts=0\n"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["inbox", "status"], f"no store: pass --store URL or set {STORE_ENV}",
                     id="no-store"),
        pytest.param(["inbox", "--store", "sqlit:///x", "status"], "did you mean", id="scheme"),
        pytest.param(
            ["inbox", "--store", "postgresql://u:secretpw@127.0.0.1:1/x", "status"],
            r"PostgreSQL at 127\.0\.0\.1:1/x",
            id="unreachable-postgresql",
        ),
        pytest.param(["inbox", "{store}", "show", "msg_x"], "no inbox event 'msg_x'",
                     id="unknown-id"),
        pytest.param(["inbox", "{store}", "retry"], "retry needs event ids", id="retry-nothing"),
        pytest.param(["inbox", "{store}", "retry", "msg_x", "--all-failed"], "retry needs",
                     id="retry-two-choices"),
        pytest.param(["inbox", "{store}", "purge", "--older-than", "a week"], "30s, 15m",
                     id="duration"),
        pytest.param(["inbox", "{store}", "status", "--watch", "--interval", "0"],
                     "--interval must be a positive number", id="interval"),
        pytest.param(["inbox", "{store}", "status", "--watch", "--count", "0"],
                     "--count must be at least 1", id="count"),
    ],
)  # fmt: skip
def test_errors_are_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"--store=sqlite:///{tmp_path / 'inbox.sqlite3'}"
    answer = cli(capsys, *[store if a == "{store}" else a for a in argv])
    assert_one_line_error(answer, message)
    assert "secretpw" not in answer[2]


def test_purge_needs_an_age(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["inbox", "--store", f"sqlite:///{tmp_path / 'i.sqlite3'}", "purge"])
    assert exited.value.code == 2
    assert "the following arguments are required: --older-than" in capsys.readouterr().err


# -- mtls-hooks process-inbox: one-line errors before any worker starts ---------------------

PLAIN_APP = """\
from quart import Quart

app = Quart(__name__)
"""

DIRECT_APP = """\
from quart import Quart

from mtls_hooks import HmacSecret, WebhookReceiver

app = Quart(__name__)
hooks = WebhookReceiver(app, path="/hooks", keys=[HmacSecret.generate().export()])
"""


@pytest.mark.parametrize(
    ("source", "message"),
    [
        pytest.param(None, r"cannot import module 'cli_inbox_\w+'", id="not-importable"),
        pytest.param(PLAIN_APP, r"cli_inbox_\w+:app has no WebhookReceiver: nothing to process",
                     id="no-receiver"),
        pytest.param(DIRECT_APP, "this app has no inbox: set MTLS_HOOKS_INBOX_URL",
                     id="no-inbox"),
    ],
)  # fmt: skip
def test_process_inbox_errors_are_one_line(
    source: str | None,
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = f"cli_inbox_{uuid.uuid4().hex[:12]}"
    if source is not None:
        (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)  # process-inbox looks APP up from the working directory
    try:
        answer = cli(capsys, "process-inbox", f"{module}:app")
    finally:
        sys.modules.pop(module, None)
    assert_one_line_error(answer, message)


def test_process_inbox_rejects_a_malformed_app_spec(capsys: pytest.CaptureFixture[str]) -> None:
    answer = cli(capsys, "process-inbox", "no_colon_here")
    assert_one_line_error(answer, r"app 'no_colon_here' must be 'module:attribute'")
