"""Inbox mode through Quart's test client: store then 202, handle from the queue, retry, dead
letter, refusals before storing, a lost store, and the configuration's failing twins.

The handler worker runs in the test (``until_idle``) with an injected clock, so retries and
backoff are shown without waiting; ``test_inbox_e2e.py`` serves the same over real mTLS.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_asyncio
from cryptography import x509
from quart import Quart, current_app
from quart.testing import QuartClient

from certs_tool import IssuedCert
from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.core._events import WebhookEvent
from mtls_hooks.core._identity import PeerIdentity
from mtls_hooks.inbox import Inbox, InboxRetry, InboxWorker
from mtls_hooks.inbox._envelope import event_from_job, job_for_event
from mtls_hooks.queue import JobState, open_store
from mtls_hooks.receiver._receiver import WebhookReceiver
from tests.queue.conftest import FakeClock, pg_schema
from tests.receiver.conftest import SPIFFE_SENDER, LogLines, Sender, tls_scope

pytestmark = pytest.mark.asyncio


@dataclass
class Handled:
    """What the handlers saw, and how many times each should fail first."""

    events: list[WebhookEvent] = field(default_factory=list)
    apps: list[str] = field(default_factory=list)
    fail_first: dict[str, int] = field(default_factory=dict)
    hang: set[str] = field(default_factory=set)

    async def handler(self, event: WebhookEvent) -> None:
        self.apps.append(current_app.name)  # the worker runs handlers in the app context
        if event.id in self.hang:
            await asyncio.Event().wait()  # a handler stuck on a call that never returns
        left = self.fail_first.get(event.id, 0)
        if left:
            self.fail_first[event.id] = left - 1
            raise RuntimeError(f"downstream unavailable (left {left})")
        self.events.append(event)


@dataclass
class Rig:
    app: Quart
    hooks: WebhookReceiver
    client: QuartClient
    sender: Sender
    scope: dict[str, Any]
    handled: Handled
    clock: FakeClock
    url: str

    async def deliver(self, **kwargs: Any) -> tuple[Any, dict[str, str]]:
        body, headers = self.sender.request(**kwargs)
        response = await self.client.post(
            "/hooks", data=body, headers=headers, scope_base=self.scope
        )
        return response, headers

    def worker(self, **options: Any) -> InboxWorker:
        return self.hooks.inbox_worker(self.app, clock=self.clock, poll_interval_s=0.01, **options)

    async def work(self, **options: Any) -> Any:
        return await self.worker(**options).run(until_idle=True)

    @property
    def inbox(self) -> Inbox:
        return self.hooks.inbox(self.app)


def make_app(
    sender: Sender, url: str, inbox: Inbox | None = None, **config: Any
) -> tuple[Quart, WebhookReceiver, Handled]:
    app = Quart("inbox_app")
    app.config.update(
        MTLS_HOOKS_INBOX_URL=url, MTLS_HOOKS_INBOX_CONCURRENCY=0, MTLS_HOOKS_INBOX_MAX_ATTEMPTS=3
    )
    app.config.update(config)
    hooks = WebhookReceiver(
        app, path="/hooks", name="payments", keys=[sender.key], mode="inbox", inbox=inbox,
        allow=["uri:spiffe://test.example/payments/*"],
    )  # fmt: skip
    handled = Handled()
    hooks.on("invoice.paid")(handled.handler)
    return app, hooks, handled


@pytest_asyncio.fixture
async def rig(sender: Sender, sender_cert: IssuedCert, tmp_path: Path) -> AsyncIterator[Rig]:
    url = f"sqlite:///{tmp_path / 'inbox.sqlite3'}"
    clock = FakeClock()
    # The store's clock decides what is due: the same fake clock as the worker's.
    inbox = Inbox(open_store(url, clock=clock))
    app, hooks, handled = make_app(sender, url, inbox)
    async with app.test_app() as test_app:
        client = cast(QuartClient, test_app.test_client())
        yield Rig(app, hooks, client, sender, tls_scope(sender_cert), handled, clock, url)
    inbox.store.close()


async def test_a_verified_event_is_stored_then_answered_202(rig: Rig, log_lines: LogLines) -> None:
    response, headers = await rig.deliver(payload={"type": "invoice.paid", "data": {"n": 7}})
    assert response.status_code == 202
    assert await response.get_data() == b""
    assert log_lines.last()["outcome"] == "queued"
    assert rig.handled.events == []  # nothing ran while the sender waited
    [job] = rig.inbox.messages()
    assert (job.state, job.target) == (JobState.PENDING, "payments")
    assert job.meta["webhook_id"] == headers["webhook-id"]
    # Durable: another connection to the file sees the committed row.
    path = rig.url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT count(*) FROM mtls_hooks_jobs WHERE queue='inbox'")
        assert rows.fetchone()[0] == 1
    counts = await rig.work()
    assert counts.handled == 1
    [event] = rig.handled.events
    assert event.id == headers["webhook-id"]
    assert event.payload == {"type": "invoice.paid", "data": {"n": 7}}
    assert event.timestamp == int(headers["webhook-timestamp"])
    assert event.endpoint == "payments"
    assert event.peer is not None
    assert event.peer.spiffe_id == SPIFFE_SENDER
    assert rig.handled.apps == ["inbox_app"]
    assert rig.inbox.messages()[0].state is JobState.DONE


async def test_an_inbox_endpoint_through_quarts_request_machinery_answers_202_too(
    sender: Sender, sender_cert: IssuedCert, tmp_path: Path
) -> None:
    app, hooks, _ = make_app(
        sender, f"sqlite:///{tmp_path / 'q.sqlite3'}", MTLS_HOOKS_QUART_REQUEST=True
    )
    async with app.test_app() as test_app:
        body, headers = sender.request()
        answers = [
            await test_app.test_client().post(
                "/hooks", data=body, headers=headers, scope_base=tls_scope(sender_cert)
            )
            for _ in range(2)
        ]
        assert [(a.status_code, a.headers.get("Webhook-Duplicate")) for a in answers] == [
            (202, None),
            (202, "true"),
        ]
        assert answers[0] is not answers[1]
        assert len(hooks.inbox(app).messages()) == 1


async def test_a_retried_delivery_is_stored_once_and_handled_once(rig: Rig) -> None:
    body, headers = rig.sender.request()
    answers = []
    for _ in range(3):
        response = await rig.client.post("/hooks", data=body, headers=headers, scope_base=rig.scope)
        answers.append((response.status_code, response.headers.get("Webhook-Duplicate")))
    assert answers == [(202, None), (202, "true"), (202, "true")]
    await rig.work()
    # After it was handled, a late retry is still known.
    response = await rig.client.post("/hooks", data=body, headers=headers, scope_base=rig.scope)
    assert (response.status_code, response.headers.get("Webhook-Duplicate")) == (202, "true")
    await rig.work()
    assert [e.id for e in rig.handled.events] == [headers["webhook-id"]]
    assert len(rig.inbox.messages()) == 1


@pytest.mark.parametrize(
    ("kwargs", "status", "reason"),
    [
        pytest.param({"webhook_id": None, "signer": "wrong"}, 401, "bad-signature",
                     id="bad-signature"),
        pytest.param({"timestamp": 1_000_000_000}, 401, "stale-timestamp", id="stale-timestamp"),
        pytest.param({"body": b"not json"}, 400, "malformed-json", id="not-json"),
    ],
)  # fmt: skip
async def test_a_refused_request_stores_nothing(
    rig: Rig, kwargs: dict[str, Any], status: int, reason: str
) -> None:
    if kwargs.pop("signer", None):
        from mtls_hooks.core._signing import HmacSecret, Signer

        kwargs["signer"] = Signer([HmacSecret.generate()])
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    response, _ = await rig.deliver(**kwargs)
    assert response.status_code == status
    body = json.loads(await response.get_data())
    assert body["reason"] == reason
    assert rig.inbox.messages() == []


async def test_an_unpinned_client_stores_nothing(rig: Rig, stranger_cert: IssuedCert) -> None:
    body, headers = rig.sender.request()
    response = await rig.client.post(
        "/hooks", data=body, headers=headers, scope_base=tls_scope(stranger_cert)
    )
    assert response.status_code == 403
    assert rig.inbox.messages() == []


async def test_a_failing_handler_is_retried_with_backoff_then_dead_lettered_and_replayed(
    rig: Rig,
) -> None:
    _, ok_headers = await rig.deliver()
    _, bad_headers = await rig.deliver()
    rig.handled.fail_first[bad_headers["webhook-id"]] = 5  # more than MAX_ATTEMPTS=3
    counts = await rig.work()
    assert (counts.handled, counts.retried) == (1, 1)
    bad = next(j for j in rig.inbox.messages() if j.state is not JobState.DONE)
    assert bad.state is JobState.PENDING
    assert bad.run_at > rig.clock.now  # backoff: not due yet
    assert "RuntimeError: downstream unavailable" in (bad.last_error or "")
    await rig.work()
    assert rig.handled.fail_first[bad_headers["webhook-id"]] == 4  # not run before its time
    for _ in range(2):
        rig.clock.advance(3600)
        await rig.work()
    job, attempts = rig.inbox.show(bad.id)
    assert job.state is JobState.FAILED
    assert [(a.number, a.outcome, a.error) for a in attempts] == [
        (1, "retry", "RuntimeError"),
        (2, "retry", "RuntimeError"),
        (3, "failed", "RuntimeError"),
    ]
    assert "gave up after 3 attempt(s)" in (job.last_error or "")
    # The operator replays the dead letter once the dependency is back.
    rig.handled.fail_first[bad_headers["webhook-id"]] = 0
    with pytest.raises(ConfigurationError, match=r"no event of endpoint 'payment'.*'payments'"):
        rig.inbox.retry(endpoint="payment")
    assert rig.inbox.retry(all_failed=True) == 1
    counts = await rig.work()
    assert counts.handled == 1
    assert sorted(e.id for e in rig.handled.events) == sorted(
        [ok_headers["webhook-id"], bad_headers["webhook-id"]]
    )
    assert rig.inbox.show(bad.id)[1][-1].number == 4


@pytest.mark.parametrize(("lost", "handled"), [(2, True), (3, False)], ids=["2-lost", "3-lost"])
async def test_an_event_that_kills_its_workers_uses_up_its_attempts(
    rig: Rig, lost: int, handled: bool
) -> None:
    _, headers = await rig.deliver()
    for n in range(lost):  # each worker dies holding it (OOM, a crash): never settled
        rig.inbox.store.claim("inbox", f"doomed-{n}", limit=1, lease_s=30)
        rig.clock.advance(31)
    counts = await rig.work()  # MAX_ATTEMPTS=3
    [job] = rig.inbox.messages()
    attempts = rig.inbox.show(job.id)[1]
    if handled:  # two of three attempts lost: the third runs
        assert (counts.handled, job.state, job.tries) == (1, JobState.DONE, 3)
        assert [e.id for e in rig.handled.events] == [headers["webhook-id"]]
        assert [(a.number, a.outcome) for a in attempts] == [(3, "done")]
    else:  # all three lost: dead-lettered, the handler never runs a fourth time
        assert (counts.failed, job.state) == (1, JobState.FAILED)
        assert rig.handled.events == []
        assert job.last_error == (
            "gave up after 3 attempt(s): lease expired: its worker doomed-2 stopped before "
            "settling it"
        )
        assert [(a.number, a.outcome, a.error) for a in attempts] == [
            (3, "failed", "LostAttemptError")
        ]


async def test_a_fault_outside_the_handler_never_leaves_the_event_held(rig: Rig) -> None:
    from tenacity import wait_fixed
    from tenacity.stop import stop_base

    class BrokenStop(stop_base):
        def __call__(self, retry_state: Any) -> bool:
            raise ValueError("a stop condition with a bug")

    _, headers = await rig.deliver()
    rig.handled.fail_first[headers["webhook-id"]] = 1
    counts = await rig.work(retry=InboxRetry(stop=BrokenStop(), wait=wait_fixed(1)))
    assert counts.handled == 0  # and run() returned: nothing is held
    [job] = rig.inbox.messages()
    assert job.state is JobState.PENDING
    assert job.run_at == rig.clock.now + 60  # tried again after a lease's time
    assert job.last_error == "worker fault: ValueError: a stop condition with a bug"
    assert [(a.outcome, a.error) for a in rig.inbox.show(job.id)[1]] == [("retry", "ValueError")]


async def test_a_hung_handler_times_out_and_is_retried(rig: Rig) -> None:
    _, headers = await rig.deliver()
    rig.handled.hang.add(headers["webhook-id"])
    counts = await rig.work(handler_timeout_s=0.05)
    assert (counts.retried, counts.handled) == (1, 0)  # its slot and lease given back
    [job] = rig.inbox.messages()
    assert job.state is JobState.PENDING
    assert job.last_error == "TimeoutError: the handler ran longer than 0.05 s"

    # Its twin: a handler's own TimeoutError keeps its own message, with or without a bound.
    class OwnTimeout(Handled):
        async def handler(self, event: WebhookEvent) -> None:
            raise TimeoutError("the ledger API timed out")

    own = OwnTimeout()
    for bound_s in (None, 30.0):
        worker = InboxWorker(rig.inbox.store, {(None, None): own.handler}, clock=rig.clock,
                             poll_interval_s=0.01, handler_timeout_s=bound_s)  # fmt: skip
        rig.clock.advance(3600)
        await worker.run(until_idle=True)
        assert rig.inbox.messages()[0].last_error == "TimeoutError: the ledger API timed out"
    # The default bound, and the setting that changes it, reach the worker.
    assert rig.worker().handler_timeout_s == 900
    app, hooks, _ = make_app(rig.sender, rig.url, MTLS_HOOKS_INBOX_HANDLER_TIMEOUT_S="30")
    assert hooks.inbox_worker(app).handler_timeout_s == 30
    hooks.inbox(app).close()


async def test_the_apps_own_worker_restarts_after_a_fault(
    sender: Sender, sender_cert: IssuedCert, tmp_path: Path, log_lines: LogLines
) -> None:
    app, hooks, handled = make_app(
        sender, f"sqlite:///{tmp_path / 'i.sqlite3'}", MTLS_HOOKS_INBOX_CONCURRENCY=1
    )
    store = hooks.inbox(app).store
    claim = store.claim
    faults = [sqlite3.DatabaseError("database disk image is malformed")]

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        if faults:  # an error the store does not translate ends the worker's run
            raise faults.pop()
        return claim(*args, **kwargs)

    store.claim = failing_once  # type: ignore[method-assign]
    async with app.test_app() as test_app:
        client = test_app.test_client()
        body, headers = sender.request()
        answer = await client.post("/hooks", data=body, headers=headers,
                                   scope_base=tls_scope(sender_cert))  # fmt: skip
        assert answer.status_code == 202
        for _ in range(400):  # bounded: the worker restarts 0.5 s after the fault
            if handled.events:
                break
            await asyncio.sleep(0.025)
        assert [e.id for e in handled.events] == [headers["webhook-id"]]
    assert faults == []


async def test_an_event_without_a_handler_is_done_and_counted_unhandled(rig: Rig) -> None:
    response, _ = await rig.deliver(event_type="customer.created")
    assert response.status_code == 202
    counts = await rig.work()
    assert (counts.unhandled, counts.handled) == (1, 0)
    [job] = rig.inbox.messages()
    assert job.state is JobState.DONE
    assert rig.inbox.show(job.id)[1][0].detail == "no handler for this event type"


async def test_a_custom_retry_policy_is_used(rig: Rig) -> None:
    from tenacity import stop_after_attempt, wait_fixed

    _, headers = await rig.deliver()
    rig.handled.fail_first[headers["webhook-id"]] = 1
    await rig.work(retry=InboxRetry(stop=stop_after_attempt(1), wait=wait_fixed(1)))
    [job] = rig.inbox.messages()
    assert job.state is JobState.FAILED


async def test_sqlite_inbox_writes_one_transaction_at_a_time(tmp_path: Path) -> None:
    # SQLite has one writer: a second transaction in flight would only wait for the lock
    # with fewer events (bench/bench_inbox.py measured the difference).
    inbox = Inbox(f"sqlite:///{tmp_path / 'one.sqlite3'}")
    assert inbox._batcher.max_flights == 1
    inbox.close()
    with pg_schema() as url:
        inbox = Inbox(url)
        assert inbox._batcher.max_flights == 4  # PostgreSQL runs batches side by side
        inbox.close()


async def test_a_lost_inbox_answers_503_never_202(rig: Rig, log_lines: LogLines) -> None:
    rig.inbox.store.close()  # the database is gone while serving
    response, _ = await rig.deliver()
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    body = json.loads(await response.get_data())
    assert body["reason"] == "store-unavailable"
    assert "inbox" in body["detail"]


async def test_envelope_round_trip_keeps_the_event(sender_cert: IssuedCert) -> None:
    peer = PeerIdentity.from_certificate(
        x509.load_pem_x509_certificate(sender_cert.cert_pem.bytes())
    )
    event = WebhookEvent("msg_1", "a.b", 1_700_000_000, {"x": [1]}, b'{"x":[1]}', peer, "ep")
    store = open_store("memory://")
    job_id, _ = store.enqueue(job_for_event(event))
    job = store.get(job_id)
    assert job is not None
    assert event_from_job(job) == event
    # The meta is written as JSON text by hand: quotes and non-ASCII types survive it.
    odd = event.__class__('msg_"2', 'type "é"\n', 7, {}, b"{}", None, "ep")
    [(odd_id, _)] = store.enqueue_many([job_for_event(odd)])
    stored = store.get(odd_id)
    assert stored is not None
    assert event_from_job(stored) == odd
    meta = job_for_event(event).meta
    assert isinstance(meta, str)
    assert json.loads(meta)["peer"]["spki_pin"] == peer.spki_pin
    unreadable = job._replace(meta={"webhook_id": "x"})
    with pytest.raises(ConfigurationError, match="is not a stored webhook"):
        event_from_job(unreadable)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        pytest.param({"MTLS_HOOKS_INBOX_URL": None}, "no inbox is configured", id="no-url"),
        pytest.param({"MTLS_HOOKS_INBOX_URL": "memory://"}, "durable", id="memory"),
        pytest.param({"MTLS_HOOKS_INBOX_CONCURRENCY": -1}, "whole number >= 0", id="negative"),
        pytest.param({"MTLS_HOOKS_INBOX_MAX_ATTEMPTS": 0}, "whole number >= 1", id="no-attempt"),
        pytest.param({"MTLS_HOOKS_INBOX_LEASE_S": "0"}, "must be > 0", id="zero-lease"),
        pytest.param({"MTLS_HOOKS_INBOX_URLS": "x"}, "MTLS_HOOKS_INBOX_URL", id="typo"),
    ],
)
async def test_bad_inbox_settings_are_refused(
    sender: Sender, tmp_path: Path, config: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        make_app(sender, f"sqlite:///{tmp_path / 'i.sqlite3'}", **config)


async def test_an_unknown_mode_is_refused(sender: Sender) -> None:
    app = Quart("bad_mode")
    with pytest.raises(ConfigurationError, match=r"mode must be 'direct' or 'inbox'.*'inbox'\?"):
        WebhookReceiver(app, path="/h", keys=[sender.key], mode="inbx")


async def test_an_inbox_endpoint_added_later_needs_an_inbox(sender: Sender) -> None:
    app = Quart("late")
    hooks = WebhookReceiver(app, path="/h", keys=[sender.key])
    with pytest.raises(ConfigurationError, match="has mode='inbox' but its app has no inbox"):
        hooks.endpoint("/later", mode="inbox")
