"""Review tests for the inbox (issue 11): README promises no other test noticed breaking.

Each test names the promise it holds ("Slow handlers: the inbox"): the events of one loop
turn share one transaction; the app stops its own inbox worker before it closes the inbox, a
running handler settling first and one past the grace going back unattempted; a worker made
with ``inbox_worker()`` keeps the app from starting its own; the inbox settings reach the
worker; a transactional handler holds no lock on its event while it runs (the done mark is
written last).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest
from quart import Quart, current_app
from quart.testing import QuartClient

from certs_tool import IssuedCert
from mtls_hooks.cli._main import main
from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.core._events import WebhookEvent
from mtls_hooks.inbox import Inbox, InboxRetry, InboxWorker
from mtls_hooks.inbox._worker import current_claim
from mtls_hooks.queue import JobState, StoreUnavailableError, open_store
from mtls_hooks.queue._protocol import NewJob
from mtls_hooks.queue._sqlite import SQLiteQueueStore
from mtls_hooks.receiver._receiver import WebhookReceiver
from tests.outbox.processes import CLI, Child
from tests.queue.conftest import FakeClock, pg_schema
from tests.receiver.conftest import Sender, tls_scope


def event(n: int, endpoint: str = "payments") -> WebhookEvent:
    body = b'{"type":"invoice.paid","n":%d}' % n
    payload = {"type": "invoice.paid", "n": n}
    return WebhookEvent(f"msg_{n}", "invoice.paid", 1_700_000_000, payload, body, None, endpoint)


class CountingStore(SQLiteQueueStore):
    """A SQLite queue store that counts its group commits and can lose its disk."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.batches: list[int] = []
        self.broken = False

    def enqueue_many(self, jobs: Sequence[NewJob]) -> list[tuple[str, bool]]:
        self.batches.append(len(jobs))
        if self.broken:
            raise StoreUnavailableError("the disk is gone")
        return super().enqueue_many(jobs)


@pytest.mark.asyncio
async def test_the_events_of_one_loop_turn_share_one_transaction(tmp_path: Path) -> None:
    # README: "The events that arrive in one event-loop turn share one transaction".
    store = CountingStore(str(tmp_path / "inbox.sqlite3"))
    inbox = Inbox(store)
    created = await asyncio.gather(
        *(inbox.accept(event(n)) for n in range(5)), inbox.accept(event(0))
    )
    assert created == [True] * 5 + [False]  # the retry inside the batch is its duplicate
    assert store.batches == [6]
    # A lost disk fails every caller of the batch (each answers 503), nothing half-stored.
    store.broken = True
    failed = await asyncio.gather(
        *(inbox.accept(event(n)) for n in (10, 11)), return_exceptions=True
    )
    assert [type(f) for f in failed] == [StoreUnavailableError, StoreUnavailableError]
    assert store.batches == [6, 2]
    assert sorted(j.meta["webhook_id"] for j in inbox.messages()) == [f"msg_{n}" for n in range(5)]
    await inbox.aclose()
    store.close()


def served_app(
    sender: Sender, url: str, grace_s: float, **config: Any
) -> tuple[Quart, WebhookReceiver, asyncio.Event]:
    """An app whose in-app inbox worker runs; the event is set when its shutdown begins."""
    app = Quart("inbox_review")
    shutting_down = asyncio.Event()

    @app.after_serving  # registered first: runs before the receiver's own
    async def note_shutdown() -> None:
        shutting_down.set()

    app.config.update(
        {
            "MTLS_HOOKS_INBOX_URL": url,
            "MTLS_HOOKS_INBOX_CONCURRENCY": 2,
            "BACKGROUND_TASK_SHUTDOWN_TIMEOUT": grace_s,
            **config,
        }
    )
    hooks = WebhookReceiver(app, path="/hooks", name="payments", keys=[sender.key], mode="inbox")
    return app, hooks, shutting_down


async def post(app: Quart, sender: Sender, cert: IssuedCert) -> None:
    client = cast(QuartClient, app.test_client())
    body, headers = sender.request()
    response = await client.post("/hooks", data=body, headers=headers, scope_base=tls_scope(cert))
    assert response.status_code == 202


@pytest.mark.asyncio
async def test_shutdown_lets_a_running_handler_settle_before_the_inbox_closes(
    sender: Sender, sender_cert: IssuedCert, tmp_path: Path
) -> None:
    # README: the server's own worker; Quart's BACKGROUND_TASK_SHUTDOWN_TIMEOUT is its grace
    # and it is stopped first, "while the rest is open".
    url = f"sqlite:///{tmp_path / 'inbox.sqlite3'}"
    app, hooks, shutting_down = served_app(sender, url, grace_s=30)
    started = asyncio.Event()

    @hooks.on("invoice.paid")
    async def slow(event: WebhookEvent) -> None:
        started.set()
        await shutting_down.wait()
        # Still working when the worker is stopped: 50 ms of blocking work on a thread (the
        # grace is 30 s; with none, the drain would cancel it and put the event back).
        await asyncio.to_thread(time.sleep, 0.05)

    async with app.test_app():
        await post(app, sender, sender_cert)
        await asyncio.wait_for(started.wait(), 30)  # a bound, not a synchronisation
    assert hooks._states[app].inbox_worker is None  # stopped by the app's after_serving
    with Inbox(url) as inbox:
        [job] = inbox.messages()
        assert job.state is JobState.DONE  # its settlement was written before the close
        assert [a.outcome for a in inbox.show(job.id)[1]] == ["done"]


@pytest.mark.asyncio
async def test_shutdown_puts_a_handler_past_its_grace_back_unattempted(
    sender: Sender, sender_cert: IssuedCert, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'inbox.sqlite3'}"
    app, hooks, _ = served_app(sender, url, grace_s=0.05)
    started = asyncio.Event()

    @hooks.on("invoice.paid")
    async def stuck(event: WebhookEvent) -> None:
        started.set()
        await asyncio.Event().wait()  # never returns: cancelled after the grace

    async with app.test_app():
        await post(app, sender, sender_cert)
        await asyncio.wait_for(started.wait(), 30)
    with Inbox(url) as inbox:
        [job] = inbox.messages()
        assert (job.state, job.tries, job.lease_owner) == (JobState.PENDING, 0, None)
        assert inbox.show(job.id)[1] == []  # a release records no attempt


@pytest.mark.asyncio
async def test_a_worker_made_with_inbox_worker_keeps_the_app_from_starting_its_own(
    sender: Sender, tmp_path: Path
) -> None:
    # README/process-inbox: the app's handlers run in that worker only, not in a second one.
    url = f"sqlite:///{tmp_path / 'inbox.sqlite3'}"
    app, hooks, _ = served_app(sender, url, grace_s=1)
    worker = hooks.inbox_worker(app)
    async with app.test_app():
        assert hooks._states[app].inbox_worker is None
    assert isinstance(worker, InboxWorker)
    app2, hooks2, _ = served_app(sender, url, grace_s=1)
    async with app2.test_app():  # its twin: without inbox_worker() the app runs its own
        assert hooks2._states[app2].inbox_worker is not None


@pytest.mark.asyncio
async def test_the_inbox_settings_reach_the_worker(sender: Sender, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'inbox.sqlite3'}"
    settings = {
        "MTLS_HOOKS_INBOX_MAX_ATTEMPTS": 4,
        "MTLS_HOOKS_INBOX_MAX_WAIT_S": 5,
        "MTLS_HOOKS_INBOX_LEASE_S": 7,
        "MTLS_HOOKS_INBOX_CONCURRENCY": 3,
    }
    app, hooks, _ = served_app(sender, url, grace_s=1, **settings)
    worker = hooks.inbox_worker(app)
    assert (worker.concurrency, worker.lease_s) == (3, 7.0)
    stop, wait = cast(Any, worker.retry.stop), cast(Any, worker.retry.wait)
    assert (stop.max_attempt_number, wait.max) == (4, 5.0)
    # README's defaults: 20 attempts, 1 s doubling to 15 min.
    default = InboxRetry()
    stop, wait = cast(Any, default.stop), cast(Any, default.wait)
    assert (stop.max_attempt_number, wait.multiplier, wait.max) == (20, 1, 900.0)
    hooks.inbox(app).close()


@pytest.mark.asyncio
async def test_a_memory_inbox_url_is_refused_however_it_is_spelt(sender: Sender) -> None:
    # README: "An inbox endpoint without an inbox, or a memory:// one, is refused at start-up".
    app = Quart("memory_inbox")
    app.config["MTLS_HOOKS_INBOX_URL"] = " memory://"
    with pytest.raises(ConfigurationError, match="durable"):
        WebhookReceiver(app, path="/h", keys=[sender.key], mode="inbox")


@pytest.fixture
def pg_url() -> Iterator[str]:
    with pg_schema() as url:
        yield url


def test_a_transactional_handler_holds_no_lock_on_its_event_while_it_runs(pg_url: str) -> None:
    # README: the done mark is "written last (the row is locked only while committing)", so
    # the worker's heartbeat never waits for a slow handler.
    clock = FakeClock()
    store = open_store(pg_url, clock=clock)
    inbox = Inbox(store)
    seen: list[str] = []

    async def book(event: WebhookEvent, conn: psycopg.AsyncConnection[Any]) -> None:
        claim = current_claim.get()
        assert claim is not None
        with psycopg.connect(pg_url, autocommit=True) as other:
            try:
                other.execute(
                    "SELECT 1 FROM mtls_hooks_jobs WHERE id = %s FOR UPDATE NOWAIT", (claim[0],)
                )
            except psycopg.errors.LockNotAvailable:
                seen.append("locked")
            else:
                seen.append("unlocked")

    async def scenario() -> Any:
        await inbox.accept(event(1, endpoint="billing"))
        worker = InboxWorker(store, {(None, "invoice.paid"): inbox.transactional(book)},
                             clock=clock, poll_interval_s=0.01, lease_s=30)  # fmt: skip
        counts = await worker.run(until_idle=True)
        await inbox.aclose()
        return counts

    counts = asyncio.run(scenario())
    assert seen == ["unlocked"]
    assert counts.handled == 1
    assert inbox.messages()[0].state is JobState.DONE
    store.close()


@pytest.mark.asyncio
async def test_mode_inbox_from_the_configuration_stores_and_answers_202(
    sender: Sender, sender_cert: IssuedCert, tmp_path: Path
) -> None:
    # README: "`mode="inbox"` on an endpoint, or `MTLS_HOOKS_MODE=inbox` for all".
    url = f"sqlite:///{tmp_path / 'inbox.sqlite3'}"
    for mode, status in (("Inbox", 202), ("direct", 204)):  # its twin: the direct mode
        app = Quart(f"mode_{mode}")
        app.config.update(
            MTLS_HOOKS_INBOX_URL=url, MTLS_HOOKS_INBOX_CONCURRENCY=0, MTLS_HOOKS_MODE=mode
        )
        hooks = WebhookReceiver(app, path="/hooks", name="payments", keys=[sender.key])
        hooks.on("invoice.paid")(lambda event: None)
        async with app.test_app():
            client = cast(QuartClient, app.test_client())
            body, headers = sender.request()
            response = await client.post(
                "/hooks", data=body, headers=headers, scope_base=tls_scope(sender_cert)
            )
            assert response.status_code == status
    with Inbox(url) as inbox:
        assert len(inbox.messages()) == 1


@pytest.mark.asyncio
async def test_a_sync_handler_runs_from_the_inbox_in_a_thread_with_the_app_context(
    sender: Sender, sender_cert: IssuedCert, tmp_path: Path
) -> None:
    # Handler docs: "Sync handlers run in a worker thread so they never block the event loop";
    # README: handlers from the inbox run "in the app context (`current_app` works)".
    url = f"sqlite:///{tmp_path / 'inbox.sqlite3'}"
    app = Quart("sync_inbox")
    app.config.update(MTLS_HOOKS_INBOX_URL=url, MTLS_HOOKS_INBOX_CONCURRENCY=0)
    hooks = WebhookReceiver(app, path="/hooks", name="payments", keys=[sender.key], mode="inbox")
    loop_thread = threading.get_ident()
    seen: list[tuple[str, bool]] = []

    @hooks.on("invoice.paid")
    def handle(event: WebhookEvent) -> None:
        seen.append((current_app.name, threading.get_ident() != loop_thread))

    async with app.test_app():
        await post(app, sender, sender_cert)
        counts = await hooks.inbox_worker(app, poll_interval_s=0.01).run(until_idle=True)
    assert counts.handled == 1
    assert seen == [("sync_inbox", True)]


@pytest.mark.asyncio
async def test_inbox_show_cannot_be_made_to_print_a_forged_sender(
    sender: Sender, sender_cert: IssuedCert, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # README: `show` prints "the sender's subject and SPIFFE ID": lines an operator trusts.
    # The event type comes from the (signed, but sender-chosen) payload.
    url = f"sqlite:///{tmp_path / 'inbox.sqlite3'}"
    app, hooks, _ = served_app(sender, url, grace_s=1, MTLS_HOOKS_INBOX_CONCURRENCY=0)
    forged = "invoice.paid\npeer CN=bank.example\nspiffe_id spiffe://bank.example/ledger"
    async with app.test_app():
        client = cast(QuartClient, app.test_client())
        body, headers = sender.request(payload={"type": forged})
        response = await client.post(
            "/hooks", data=body, headers=headers, scope_base=tls_scope(sender_cert)
        )
        assert response.status_code == 202
        [job] = hooks.inbox(app).messages()
    capsys.readouterr()
    assert main(["inbox", "--store", url, "show", job.id]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert not any(line.startswith("peer CN=bank.example") for line in lines)


_STARTED_APP = """
from quart import Quart
from mtls_hooks.receiver._receiver import WebhookReceiver

app = Quart(__name__)
hooks = WebhookReceiver(app, path="/hooks", name="payments", mode="inbox")
pools = []


@app.before_serving
async def open_pool():
    pools.append("pool")


@app.after_serving
async def close_pool():
    print("review: pool closed", flush=True)


@hooks.on("invoice.paid")
async def handle(event):
    print(f"review: handled {event.id} with {pools}", flush=True)
"""


def test_process_inbox_starts_the_app_before_its_handlers_and_stops_it_after(
    sender: Sender, tmp_path: Path
) -> None:
    # README: process-inbox "imports and starts the app (its `before_serving` functions run,
    # so handlers find their pools)"; the app's after_serving runs once the worker stopped.
    (tmp_path / "review_started_app.py").write_text(_STARTED_APP)
    url = f"sqlite:///{tmp_path / 'inbox.sqlite3'}"
    env = {
        "MTLS_HOOKS_INBOX_URL": url,
        "MTLS_HOOKS_INBOX_CONCURRENCY": "0",
        "MTLS_HOOKS_KEYS": sender.key,
        "PYTHONPATH": os.pathsep.join([*sys.path, str(tmp_path)]),
    }
    argv = [CLI, "process-inbox", "review_started_app:app", "--poll-interval-s", "0.05"]
    child = Child(argv, env)
    try:
        child.wait_for(r"mtls-hooks process-inbox: worker \S+ on ")
        with Inbox(url) as inbox:
            asyncio.run(inbox.accept(event(1)))
            asyncio.run(inbox.aclose())
        child.wait_for(r"review: handled msg_1 with \['pool'\]")
        assert child.terminate() == 0
    finally:
        child.close()
    output = "".join(child.output)
    assert output.index("review: handled msg_1") < output.index("review: pool closed")
    assert output.index("review: pool closed") < output.index("mtls-hooks process-inbox: stopped")
