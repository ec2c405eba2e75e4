"""The outbox API: enqueue, idempotency, transactional enqueue, endpoints, bad input."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import psycopg
import pytest

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.outbox import AsyncOutbox, DeliveryWorker, Endpoint, Outbox, UnknownEndpointError
from mtls_hooks.queue import JobState, StoreUnavailableError, open_store
from tests.outbox.conftest import OutboxPki, Receiver
from tests.queue.conftest import pg_schema


def test_same_idempotency_key_is_one_message(store_url: str, pki: OutboxPki) -> None:
    with Outbox(store_url) as outbox:
        outbox.add_endpoint(pki.endpoint("billing", "https://localhost:1/hooks"))
        first = outbox.enqueue("billing", {"n": 1}, event_type="t", idempotency_key="order-7")
        again = outbox.enqueue("billing", {"n": 2}, event_type="t", idempotency_key="order-7")
        other = outbox.enqueue("billing", {"n": 1}, event_type="t", idempotency_key="order-8")
        assert first == again != other
        assert len(outbox.messages()) == 2
        assert first.startswith("msg_")


def test_async_twin_has_the_same_shape(store_url: str, pki: OutboxPki) -> None:
    async def scenario() -> None:
        async with AsyncOutbox(store_url) as outbox:
            await outbox.add_endpoint(pki.endpoint("billing", "https://localhost:1/hooks"))
            first = await outbox.enqueue("billing", {"n": 1}, event_type="t", idempotency_key="k")
            again = await outbox.enqueue("billing", {"n": 1}, event_type="t", idempotency_key="k")
            assert first == again
            job, history = await outbox.show(first)
            assert (job.meta, history) == ({"event_type": "t"}, [])
            assert (await outbox.status()).by_state["pending"] == 1
            await outbox.disable("billing")
            assert not (await outbox.endpoint("billing")).enabled
            await outbox.enable("billing")
            assert [s.endpoint.name for s in await outbox.endpoints()] == ["billing"]
            with pytest.raises(UnknownEndpointError):
                await outbox.enqueue("biling", {})

    asyncio.run(scenario())
    sync_names = {n for n in dir(Outbox) if not n.startswith("_")} - {"close"}
    async_names = {n for n in dir(AsyncOutbox) if not n.startswith("_")} - {"aclose"}
    assert sync_names == async_names


def test_bad_input_is_a_typed_error_and_writes_nothing(store_url: str, pki: OutboxPki) -> None:
    with Outbox(store_url) as outbox:
        outbox.add_endpoint(pki.endpoint("billing", "https://localhost:1/hooks"))
        with pytest.raises(UnknownEndpointError, match=r"'biling' \(did you mean 'billing'\?\)"):
            outbox.enqueue("biling", {"n": 1})
        with pytest.raises(ConfigurationError, match="not JSON-serialisable"):
            outbox.enqueue("billing", {"when": object()})
        with pytest.raises(ConfigurationError, match="bytes are sent verbatim"):
            outbox.enqueue("billing", b"{}", event_type="t")
        assert outbox.messages() == []
        assert outbox.status().by_state["pending"] == 0


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("queue.sqlite3", "must look like", id="no-scheme"),
        pytest.param("sqlit:///q.db", r"did you mean 'sqlite'", id="misspelt-scheme"),
        pytest.param("sqlite://host/q.db", "has a host", id="sqlite-host"),
        pytest.param("sqlite:///", "needs a file path", id="sqlite-no-path"),
        pytest.param("sqlite:///q.db?synchronus=full", "did you mean 'synchronous'", id="param"),
        pytest.param("sqlite:///q.db?synchronous=off", "synchronous must be", id="sync-off"),
        pytest.param("postgresql://h/db?prepare_threshold=x", "malformed", id="pg-param"),
    ],
)
def test_malformed_store_url(url: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=message):
        open_store(url.replace("q.db", str(tmp_path / "q.db")))


def test_unreachable_postgresql_is_a_typed_error_naming_no_password() -> None:
    with pytest.raises(StoreUnavailableError, match=r"PostgreSQL at 127\.0\.0\.1:1/db") as caught:
        Outbox("postgresql://app:hunter2@127.0.0.1:1/db")
    assert "hunter2" not in str(caught.value)


def test_endpoint_records_hold_references_never_secrets(pki: OutboxPki, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="by reference") as caught:
        Endpoint(name="x", url="https://h/", signing_keys=(pki.secret,))
    assert pki.secret not in str(caught.value)
    with pytest.raises(ConfigurationError, match=r"file:/path or env:NAME"):
        Endpoint(name="x", url="https://h/", signing_keys=("keys.txt",))
    with pytest.raises(ConfigurationError, match="https"):
        Endpoint(name="x", url="http://h/", signing_keys=("env:K",))
    with pytest.raises(ConfigurationError, match=r"unknown endpoint setting 'pinz'.*'pins'"):
        Endpoint.from_config("x", {"url": "https://h/", "signing_keys": ["env:K"], "pinz": []})
    url = f"sqlite:///{tmp_path / 'q.sqlite3'}"
    with Outbox(url) as outbox:
        outbox.add_endpoint(pki.endpoint("billing", "https://localhost:1/hooks"))
        assert outbox.endpoint("billing").endpoint == pki.endpoint(
            "billing", "https://localhost:1/hooks"
        )
    database = (tmp_path / "q.sqlite3").read_bytes()
    assert pki.secret.encode() not in database
    assert b"BEGIN" not in database  # no PEM either


def _transactional(outbox: Outbox, connection: object, commit: bool) -> str:
    message_id = outbox.enqueue(
        "billing", {"n": 1}, event_type="invoice.paid", connection=connection
    )
    getattr(connection, "commit" if commit else "rollback")()
    return message_id


def test_transactional_enqueue_on_postgresql(pki: OutboxPki, receiver: Receiver) -> None:
    with pg_schema() as url, Outbox(url) as outbox:
        outbox.add_endpoint(pki.endpoint("billing", receiver.url()))
        with psycopg.connect(url) as conn:  # the application's own connection
            conn.execute("CREATE TABLE invoices (id TEXT)")
            conn.commit()
            conn.execute("INSERT INTO invoices VALUES ('in_1')")
            rolled_back = _transactional(outbox, conn, commit=False)
            conn.execute("INSERT INTO invoices VALUES ('in_2')")
            committed = _transactional(outbox, conn, commit=True)
            assert conn.execute("SELECT id FROM invoices").fetchall() == [("in_2",)]
        assert outbox.store.get(rolled_back) is None
        asyncio.run(DeliveryWorker(outbox.store).run(until_idle=True))
        assert receiver.seen()["handled"] == [committed]


def test_async_transactional_enqueue_on_postgresql(pki: OutboxPki, receiver: Receiver) -> None:
    async def scenario(url: str) -> tuple[str, str]:
        async with AsyncOutbox(url) as outbox:
            await outbox.add_endpoint(pki.endpoint("billing", receiver.url()))
            async with await psycopg.AsyncConnection.connect(url) as conn:
                gone = await outbox.enqueue("billing", {}, event_type="t", connection=conn)
                await conn.rollback()
                kept = await outbox.enqueue("billing", {}, event_type="t", connection=conn)
                await conn.commit()
            assert await asyncio.to_thread(outbox.store.get, gone) is None
            await DeliveryWorker(outbox.store).run(until_idle=True)
            return gone, kept

    with pg_schema() as url:
        _, kept = asyncio.run(scenario(url))
    assert receiver.seen()["handled"] == [kept]


def test_transactional_enqueue_on_sqlite(
    pki: OutboxPki, receiver: Receiver, tmp_path: Path
) -> None:
    path = tmp_path / "app.sqlite3"
    with Outbox(f"sqlite:///{path}") as outbox:
        outbox.add_endpoint(pki.endpoint("billing", receiver.url()))
        conn = sqlite3.connect(path)
        try:
            rolled_back = _transactional(outbox, conn, commit=False)
            committed = _transactional(outbox, conn, commit=True)
        finally:
            conn.close()
        assert outbox.store.get(rolled_back) is None
        assert outbox.store.get(committed).state is JobState.PENDING  # type: ignore[union-attr]
        asyncio.run(DeliveryWorker(outbox.store).run(until_idle=True))
    assert receiver.seen()["handled"] == [committed]


def test_a_foreign_connection_is_refused(pki: OutboxPki, tmp_path: Path) -> None:
    with Outbox(f"sqlite:///{tmp_path / 'q.sqlite3'}") as outbox:
        outbox.add_endpoint(pki.endpoint("billing", "https://localhost:1/hooks"))
        with pytest.raises(ConfigurationError, match="sqlite3 connection"):
            outbox.enqueue("billing", {}, connection=object())
    with Outbox("memory://") as outbox:
        outbox.add_endpoint(pki.endpoint("billing", "https://localhost:1/hooks"))
        with pytest.raises(ConfigurationError, match="caller's connection"):
            outbox.enqueue("billing", {}, connection=object())
