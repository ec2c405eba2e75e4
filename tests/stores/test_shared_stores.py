"""What only the shared stores promise: claim tokens, Redis's own expiry, PostgreSQL's sweep,
and PostgreSQL's effects committed with the dedupe record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from psycopg import sql

from mtls_hooks.core._events import WebhookEvent
from mtls_hooks.queue._protocol import StoreUnavailableError
from mtls_hooks.stores._postgres import PostgresDedupeStore
from mtls_hooks.stores._replay import ClaimState
from tests.peers import PG_URL, REDIS_URL
from tests.stores._backends import Clock, Spec, need, new_namespace
from tests.stores.conftest import StoreFactory

CLAIMED, DONE, IN_FLIGHT = ClaimState.CLAIMED, ClaimState.DONE, ClaimState.IN_FLIGHT


@pytest.fixture(params=["postgresql", "redis"])
def shared_spec(request: pytest.FixtureRequest) -> Any:
    need(request.param)
    spec = Spec(request.param, new_namespace())
    yield spec
    spec.drop()


@pytest_asyncio.fixture
async def make_shared(shared_spec: Spec) -> AsyncIterator[StoreFactory]:
    opened: list[Any] = []

    def factory(**kwargs: Any) -> Any:
        store = shared_spec.open(**kwargs)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.aclose()


async def lease_ends(store: Any, key: str, deadline_s: float = 10.0) -> None:
    """Poll until ``key``'s lease has ended (Redis expires it on its own clock)."""
    deadline = time.monotonic() + deadline_s
    while await store.claim(key) is not CLAIMED:
        assert time.monotonic() < deadline, "the lease never ended"
        await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_a_late_worker_cannot_settle_a_claim_another_took_over(
    shared_spec: Spec, make_shared: StoreFactory
) -> None:
    """A's lease ends, B takes the id over: A's release or complete must not touch B's claim."""
    clock = Clock()
    a, b, c = (make_shared(clock=clock, lease_s=0.2) for _ in range(3))
    assert await a.claim("ep x") is CLAIMED
    if shared_spec.clocked:
        clock.now += 1
        assert await b.claim("ep x") is CLAIMED
    else:
        await lease_ends(b, "ep x")
    await a.release("ep x")  # late: must not free B's claim
    assert await c.claim("ep x") is IN_FLIGHT
    await a.complete("ep x")  # late: must not mark B's run done
    assert await c.claim("ep x") is IN_FLIGHT
    await b.complete("ep x")
    assert await c.claim("ep x") is DONE


@pytest.mark.asyncio
async def test_redis_keys_expire_with_the_lease_and_the_retention() -> None:
    need("redis")
    import redis.asyncio as aioredis

    from mtls_hooks.stores._redis import RedisDedupeStore

    namespace = new_namespace()
    store = RedisDedupeStore(REDIS_URL, namespace=namespace, retention_s=3 * 86400, lease_s=30)
    raw = aioredis.Redis.from_url(REDIS_URL)
    try:
        key = f"{namespace}:dedupe:ep x"
        assert await store.claim("ep x") is CLAIMED
        assert 29_000 < await raw.pttl(key) <= 30_000
        await store.complete("ep x")
        assert 3 * 86400_000 - 5_000 < await raw.pttl(key) <= 3 * 86400_000
        assert await store.claim("ep x") is DONE
        short = RedisDedupeStore(REDIS_URL, namespace=namespace, retention_s=0.3, lease_s=0.2)
        try:
            assert await short.claim("ep y") is CLAIMED
            await lease_ends(short, "ep y")  # an abandoned claim frees itself
            await short.complete("ep y")
            assert await short.claim("ep y") is DONE
            await lease_ends(short, "ep y")  # and the retention ends
        finally:
            await short.aclose()
    finally:
        await raw.aclose()
        await store.aclose()
        Spec("redis", namespace).drop()


@pytest.mark.asyncio
async def test_postgres_sweeps_expired_ids_in_bounded_batches() -> None:
    need("postgresql")
    from mtls_hooks.stores._postgres import SWEEP_BATCH, PostgresDedupeStore

    namespace = new_namespace()
    clock = Clock()
    store = PostgresDedupeStore(PG_URL, namespace=namespace, retention_s=10, lease_s=5, clock=clock)
    try:
        await store.claim("ep live")
        pool = await store.connection_pool()
        async with pool.connection() as conn:
            await conn.execute(
                sql.SQL(
                    "INSERT INTO {} SELECT 'ep', 'old-' || n, true, 1, %s"
                    " FROM generate_series(1, %s) n"
                ).format(sql.Identifier(store.table)),
                (clock.now - 1, SWEEP_BATCH + 10),
            )
        assert await store.sweep(max_batches=1) == SWEEP_BATCH  # bounded
        assert await store.sweep() == 10
        assert await store.claim("ep live") is IN_FLIGHT  # live rows stay
    finally:
        await store.aclose()
        Spec("postgresql", namespace).drop()


# -- effects committed with the dedupe record ------------------------------------------------


@pytest_asyncio.fixture
async def pg_store() -> AsyncIterator[PostgresDedupeStore]:
    need("postgresql")

    namespace = new_namespace()
    store = PostgresDedupeStore(PG_URL, namespace=namespace)
    async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
        await conn.execute(f'CREATE TABLE "{namespace}_ledger" (event_id text PRIMARY KEY)')
    yield store
    await store.aclose()
    async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
        await conn.execute(f'DROP TABLE "{namespace}_ledger"')
    Spec("postgresql", namespace).drop()


async def book(conn: psycopg.AsyncConnection[Any], namespace: str, webhook_id: str) -> None:
    """The handler's own write: one ledger row."""
    insert = sql.SQL("INSERT INTO {} VALUES (%s)").format(sql.Identifier(f"{namespace}_ledger"))
    await conn.execute(insert, (webhook_id,))


def event(webhook_id: str) -> WebhookEvent:
    return WebhookEvent(webhook_id, "invoice.paid", 0, {}, b"{}", None, "billing")


async def rows(store: PostgresDedupeStore, query: str) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(PG_URL) as conn:
        cursor = await conn.execute(query.format(ns=store.namespace).encode())
        return await cursor.fetchall()


@pytest.mark.asyncio
async def test_a_failing_transactional_handler_leaves_neither_its_row_nor_the_done_mark(
    pg_store: PostgresDedupeStore,
) -> None:
    attempts: list[int] = []

    @pg_store.transactional
    async def pay(evt: WebhookEvent, conn: psycopg.AsyncConnection[Any]) -> None:
        await book(conn, pg_store.namespace, evt.id)
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("the payment provider timed out")

    key = "billing msg_1"
    assert await pg_store.claim(key) is CLAIMED
    with pytest.raises(RuntimeError):
        await pay(event("msg_1"))
    await pg_store.release(key)  # what the receiver does after a handler error
    assert await rows(pg_store, 'SELECT * FROM "{ns}_ledger"') == []
    assert await rows(pg_store, 'SELECT * FROM "{ns}_dedupe"') == []
    # The sender's retry runs it again, once, and both writes commit together.
    assert await pg_store.claim(key) is CLAIMED
    await pay(event("msg_1"))
    await pg_store.complete(key)
    assert await rows(pg_store, 'SELECT * FROM "{ns}_ledger"') == [("msg_1",)]
    assert await rows(pg_store, 'SELECT done FROM "{ns}_dedupe"') == [(True,)]
    assert await pg_store.claim(key) is DONE
    assert len(attempts) == 2


@pytest.mark.asyncio
async def test_a_committed_transactional_handler_is_done_even_if_complete_never_runs(
    pg_store: PostgresDedupeStore,
) -> None:
    """A crash after the commit (before the receiver's complete) still leaves the id done."""

    @pg_store.transactional
    async def pay(evt: WebhookEvent, conn: psycopg.AsyncConnection[Any]) -> None:
        await book(conn, pg_store.namespace, evt.id)

    assert await pg_store.claim("billing msg_2") is CLAIMED
    await pay(event("msg_2"))
    assert await pg_store.claim("billing msg_2") is DONE


@pytest.mark.asyncio
async def test_a_transactional_handler_whose_claim_was_taken_over_commits_nothing(
    pg_store: PostgresDedupeStore,
) -> None:
    clock = Clock()
    slow = PostgresDedupeStore(PG_URL, namespace=pg_store.namespace, lease_s=1, clock=clock)
    other = PostgresDedupeStore(PG_URL, namespace=pg_store.namespace, lease_s=1, clock=clock)
    try:

        @slow.transactional
        async def pay(evt: WebhookEvent, conn: psycopg.AsyncConnection[Any]) -> None:
            await book(conn, slow.namespace, evt.id)

        assert await slow.claim("billing msg_3") is CLAIMED
        clock.now += 2  # the lease ends while the handler is still on its way
        assert await other.claim("billing msg_3") is CLAIMED
        with pytest.raises(StoreUnavailableError, match="lease"):
            await pay(event("msg_3"))
        assert await rows(pg_store, 'SELECT * FROM "{ns}_ledger"') == []
    finally:
        await slow.aclose()
        await other.aclose()


@pytest.mark.asyncio
async def test_a_claim_cancelled_on_its_way_is_released(make_shared: StoreFactory) -> None:
    """A sender that hangs up while its claim is in the database does not block the id."""
    store, other = make_shared(), make_shared()
    assert await store.claim("ep warm-up") is CLAIMED  # connected: the next claim goes at once
    claim = asyncio.ensure_future(store.claim("ep x"))
    for _ in range(3):  # submitted, then its batch sent: now the view is cancelled
        await asyncio.sleep(0)
    claim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await claim
    deadline = time.monotonic() + 10
    while (state := await other.claim("ep x")) is not CLAIMED:
        assert state is IN_FLIGHT
        assert time.monotonic() < deadline, "the orphaned claim was never released"
        await asyncio.sleep(0.02)
