"""The receiver on each dedupe store: selection by URL, start-up failures, a store lost while
serving (503, never a 2xx for an unrecorded event).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.queue._protocol import StoreUnavailableError
from mtls_hooks.stores._replay import MemoryDedupeStore, SQLiteDedupeStore
from tests.peers import PG_URL, REDIS_URL
from tests.receiver.conftest import Sender
from tests.stores._backends import app_with, need
from tests.stores._proxy import TcpProxy


@pytest.fixture(scope="module")
def sender() -> Sender:
    return Sender()


# -- selection by URL ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "url", "kind"),
    [
        pytest.param("memory", "memory:", "MemoryDedupeStore", id="memory"),
        pytest.param("sqlite", "sqlite:///{tmp}/d.db", "SQLiteDedupeStore", id="sqlite"),
        pytest.param("postgresql", PG_URL, "PostgresDedupeStore", id="postgresql"),
        pytest.param("redis", REDIS_URL, "RedisDedupeStore", id="redis"),
    ],
)
@pytest.mark.asyncio
async def test_the_dedupe_url_selects_the_store(
    backend: str, url: str, kind: str, *, sender: Sender, tmp_path: Path, namespace: str
) -> None:
    need(backend)
    config = {
        "MTLS_HOOKS_DEDUPE_URL": url.format(tmp=tmp_path),
        "MTLS_HOOKS_DEDUPE_NAMESPACE": namespace,
        "MTLS_HOOKS_RETENTION_S": "3600",
        "MTLS_HOOKS_LEASE_S": "60",
    }
    hooks = app_with(config, sender)
    app = next(iter(hooks._states))
    store = hooks.store(app)
    try:
        assert type(store).__name__ == kind
        assert (getattr(store, "retention_s", None), getattr(store, "lease_s", None)) == (
            3600.0,
            60.0,
        )
        assert getattr(store, "namespace", namespace) == namespace
        ran: list[str] = []
        hooks.on_any(lambda event: ran.append(event.id))
        body, headers = sender.request()
        client = app.test_client()
        first = await client.post("/h", data=body, headers=headers)
        again = await client.post("/h", data=body, headers=headers)
        assert (first.status_code, again.status_code) == (204, 204)
        assert again.headers["Webhook-Duplicate"] == "true"
        assert len(ran) == 1
    finally:
        await store.aclose()


def test_dedupe_path_stays_an_alias_of_sqlite(sender: Sender, tmp_path: Path) -> None:
    hooks = app_with({"MTLS_HOOKS_DEDUPE_PATH": str(tmp_path / "d.db")}, sender)
    store = hooks.store(next(iter(hooks._states)))
    assert isinstance(store, SQLiteDedupeStore)
    store.close()


def test_without_a_url_the_store_is_in_memory(sender: Sender) -> None:
    hooks = app_with({}, sender)
    assert isinstance(hooks.store(next(iter(hooks._states))), MemoryDedupeStore)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        pytest.param(
            {"MTLS_HOOKS_DEDUPE_URL": "memory:", "MTLS_HOOKS_DEDUPE_PATH": "x.db"},
            "not both",
            id="url-and-path",
        ),
        pytest.param({"MTLS_HOOKS_DEDUPE_URL": "mysql://db/x"}, "must start with", id="scheme"),
        pytest.param({"MTLS_HOOKS_DEDUPE_URL": "sqlite://host/x.db"}, "sqlite:///", id="host"),
        pytest.param(
            {
                "MTLS_HOOKS_DEDUPE_URL": "redis://127.0.0.1:1/0",
                "MTLS_HOOKS_DEDUPE_NAMESPACE": "a b",
            },
            "namespace",
            id="namespace",
        ),
        pytest.param({"MTLS_HOOKS_DEDUPE_URLL": "memory:"}, "MTLS_HOOKS_DEDUPE_URL", id="typo"),
    ],
)
def test_bad_dedupe_settings_are_configuration_errors(
    config: dict[str, str], message: str, sender: Sender
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        app_with(config, sender)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("postgresql://root:s3cret@127.0.0.1:1/test", id="postgresql"),
        pytest.param("redis://:s3cret@127.0.0.1:1/0", id="redis"),
    ],
)
def test_an_unreachable_store_fails_at_start_up_in_one_line(url: str, sender: Sender) -> None:
    with pytest.raises(StoreUnavailableError) as caught:
        app_with({"MTLS_HOOKS_DEDUPE_URL": url}, sender)
    message = str(caught.value)
    assert "unreachable" in message
    assert "127.0.0.1:1" in message
    assert "\n" not in message
    assert "s3cret" not in message  # the password never reaches a log line


# -- a store lost while serving ----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgresql", "redis"])
@pytest.mark.asyncio
async def test_a_store_lost_while_serving_is_503_and_the_handler_does_not_run(
    backend: str, sender: Sender, namespace: str
) -> None:
    need(backend)
    proxy = TcpProxy(PG_URL if backend == "postgresql" else REDIS_URL)
    try:
        store: Any
        if backend == "postgresql":
            from mtls_hooks.stores._postgres import PostgresDedupeStore

            store = PostgresDedupeStore(proxy.url, namespace=namespace, timeout_s=1.0)
        else:
            from mtls_hooks.stores._redis import RedisDedupeStore

            store = RedisDedupeStore(proxy.url, namespace=namespace, timeout_s=1.0)
        hooks = app_with({}, sender, store=store)
        app = next(iter(hooks._states))
        ran: list[str] = []
        hooks.on_any(lambda event: ran.append(event.id))
        client = app.test_client()
        body, headers = sender.request()
        assert (await client.post("/h", data=body, headers=headers)).status_code == 204
        proxy.cut()
        for _ in range(2):  # the broken pooled connection, then a connection that fails
            body, headers = sender.request()
            response = await client.post("/h", data=body, headers=headers)
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "30"
            assert response.content_type == "application/problem+json"
            problem = json.loads(await response.get_data())
            assert problem["reason"] == "store-unavailable"
        assert len(ran) == 1
        await store.aclose()
    finally:
        proxy.close()


def test_a_sqlite_url_carries_the_synchronous_mode(sender: Sender, tmp_path: Path) -> None:
    from mtls_hooks.stores._url import open_dedupe_store

    store = open_dedupe_store(f"sqlite:///{tmp_path}/d.db?synchronous=full")
    assert isinstance(store, SQLiteDedupeStore)
    assert store.synchronous == "full"
    store.close()
    with pytest.raises(ConfigurationError, match="did you mean 'synchronous'"):
        open_dedupe_store(f"sqlite:///{tmp_path}/d.db?synchronus=full")
