"""Exactly-once effects from a PostgreSQL inbox: the handler's writes and the event's done mark
commit in one transaction, fenced by the worker's lease.

Real PostgreSQL (a fresh schema per test); the worker runs in the test with an injected clock.
The crash at the worst moment (after the commit, before the worker wrote its settlement) is
reproduced by running the wrapped handler under a claim and never settling it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.core._events import WebhookEvent
from mtls_hooks.inbox import Inbox, InboxWorker
from mtls_hooks.inbox._worker import current_claim
from mtls_hooks.queue import JobState, QueueStore, StoreUnavailableError, open_store
from tests.queue.conftest import FakeClock, pg_schema


@pytest.fixture
def pg_url() -> Iterator[str]:
    with pg_schema() as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE ledger (webhook_id text, amount int)")
        yield url


def ledger(url: str) -> list[tuple[str, int]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT webhook_id, amount FROM ledger ORDER BY 1").fetchall()


def event(webhook_id: str, amount: int = 42) -> WebhookEvent:
    payload = {"type": "invoice.paid", "data": {"amount": amount}}
    body = b'{"type":"invoice.paid","data":{"amount":%d}}' % amount
    return WebhookEvent(webhook_id, "invoice.paid", 1_700_000_000, payload, body, None, "billing")


class Book:
    """A transactional handler that writes a ledger row, then fails while ``failures`` last."""

    def __init__(self, inbox: Inbox, failures: int = 0) -> None:
        self.failures = failures
        self.runs = 0
        self.handler = inbox.transactional(self.book)

    async def book(self, event: WebhookEvent, conn: psycopg.AsyncConnection[Any]) -> None:
        self.runs += 1
        await conn.execute(
            "INSERT INTO ledger VALUES (%s, %s)", (event.id, event.payload["data"]["amount"])
        )
        if self.failures:
            self.failures -= 1
            raise RuntimeError("the ledger's downstream check failed")


async def run_worker(store: QueueStore, book: Book, clock: FakeClock, owner: str = "w1") -> Any:
    worker = InboxWorker(store, {(None, "invoice.paid"): book.handler}, clock=clock,
                         poll_interval_s=0.01, worker_id=owner, lease_s=30)  # fmt: skip
    return await worker.run(until_idle=True)


def test_a_handler_that_raises_leaves_neither_row_nor_done_mark(pg_url: str) -> None:
    clock = FakeClock()
    store = open_store(pg_url, clock=clock)
    inbox = Inbox(store)
    book = Book(inbox, failures=1)

    async def scenario() -> None:
        await inbox.accept(event("msg_1"))
        counts = await run_worker(store, book, clock)
        assert counts.retried == 1
        assert ledger(pg_url) == []  # the row rolled back with the done mark
        [job] = inbox.messages()
        assert job.state is JobState.PENDING
        clock.advance(3600)
        counts = await run_worker(store, book, clock)
        assert counts.handled == 1
        await inbox.aclose()

    asyncio.run(scenario())
    assert ledger(pg_url) == [("msg_1", 42)]
    [job] = inbox.messages()
    assert (job.state, job.tries) == (JobState.DONE, 2)
    assert [a.outcome for a in inbox.show(job.id)[1]] == ["retry", "done"]
    assert book.runs == 2
    store.close()


def test_a_crash_after_the_commit_never_runs_the_handler_again(pg_url: str) -> None:
    clock = FakeClock()
    store = open_store(pg_url, clock=clock)
    inbox = Inbox(store)
    book = Book(inbox)

    async def scenario() -> None:
        await inbox.accept(event("msg_2", 7))
        [job] = store.claim("inbox", "doomed", limit=1, lease_s=30)
        # The handler commits under the doomed worker's lease; the worker then "dies" before
        # writing its settlement (it never does).
        token = current_claim.set((job.id, "doomed"))
        try:
            await book.handler(event("msg_2", 7))
        finally:
            current_claim.reset(token)
        clock.advance(60)  # the dead worker's lease ends
        counts = await run_worker(store, book, clock, owner="survivor")
        assert counts.handled == 0  # nothing to claim: the event is done
        await inbox.aclose()

    asyncio.run(scenario())
    assert ledger(pg_url) == [("msg_2", 7)]
    assert book.runs == 1
    assert inbox.messages()[0].state is JobState.DONE
    store.close()


def test_a_lost_lease_commits_nothing(pg_url: str) -> None:
    clock = FakeClock()
    store = open_store(pg_url, clock=clock)
    inbox = Inbox(store)
    book = Book(inbox)

    async def scenario() -> None:
        await inbox.accept(event("msg_3"))
        [job] = store.claim("inbox", "slow", limit=1, lease_s=30)
        clock.advance(60)  # the slow worker's lease ends and another takes the event
        [taken] = store.claim("inbox", "fast", limit=1, lease_s=30)
        assert taken.id == job.id
        token = current_claim.set((job.id, "slow"))
        try:
            with pytest.raises(StoreUnavailableError, match=r"lease on inbox event \S+ was lost"):
                await book.handler(event("msg_3"))
        finally:
            current_claim.reset(token)
        await inbox.aclose()

    asyncio.run(scenario())
    assert ledger(pg_url) == []  # the slow worker's row rolled back
    assert inbox.messages()[0].state is JobState.RUNNING  # still the fast worker's
    store.close()


def test_a_transactional_handler_runs_only_from_the_inbox(pg_url: str) -> None:
    inbox = Inbox(pg_url)
    book = Book(inbox)

    async def direct_call() -> None:  # as a direct-mode endpoint would call it
        await book.handler(event("msg_4"))

    with pytest.raises(ConfigurationError, match="runs only from the inbox"):
        asyncio.run(direct_call())
    inbox.close()


def test_transactional_handlers_need_a_postgresql_inbox(tmp_path: Path) -> None:
    inbox = Inbox(f"sqlite:///{tmp_path / 'i.sqlite3'}")
    with pytest.raises(ConfigurationError, match="need a PostgreSQL inbox"):
        Book(inbox)
    inbox.close()
