"""The dedupe stores: one claim / complete / release contract, both implementations."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.stores._replay import (
    ClaimState,
    DedupeStore,
    MemoryDedupeStore,
    SQLiteDedupeStore,
)

CLAIMED, DONE, IN_FLIGHT = ClaimState.CLAIMED, ClaimState.DONE, ClaimState.IN_FLIGHT


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


StoreFactory = Callable[..., DedupeStore]


@pytest_asyncio.fixture(params=["memory", "sqlite"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    opened: list[DedupeStore] = []

    def factory(**kwargs: object) -> DedupeStore:
        store: DedupeStore
        if request.param == "memory":
            store = MemoryDedupeStore(**kwargs)  # type: ignore[arg-type]
        else:
            store = SQLiteDedupeStore(tmp_path / "dedupe.db", **kwargs)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.aclose()


@pytest.mark.asyncio
async def test_claim_complete_then_duplicate(make_store: StoreFactory) -> None:
    store = make_store(clock=Clock())
    assert await store.claim("a") is CLAIMED
    assert await store.claim("a") is IN_FLIGHT  # the concurrent twin
    await store.complete("a")
    assert await store.claim("a") is DONE
    assert await store.claim("b") is CLAIMED  # other ids are independent


@pytest.mark.asyncio
async def test_release_lets_a_retry_run_again(make_store: StoreFactory) -> None:
    store = make_store(clock=Clock())
    assert await store.claim("a") is CLAIMED
    await store.release("a")
    assert await store.claim("a") is CLAIMED


@pytest.mark.asyncio
async def test_release_never_forgets_a_done_id(make_store: StoreFactory) -> None:
    store = make_store(clock=Clock())
    await store.claim("a")
    await store.complete("a")
    await store.release("a")
    assert await store.claim("a") is DONE


@pytest.mark.asyncio
async def test_retention_window_ends(make_store: StoreFactory) -> None:
    clock = Clock()
    store = make_store(clock=clock, retention_s=3600, lease_s=60)
    await store.claim("a")
    await store.complete("a")
    clock.now += 3599
    assert await store.claim("a") is DONE
    clock.now += 2
    assert await store.claim("a") is CLAIMED


@pytest.mark.asyncio
async def test_lease_of_an_abandoned_claim_ends(make_store: StoreFactory) -> None:
    clock = Clock()
    store = make_store(clock=clock, lease_s=30)
    assert await store.claim("a") is CLAIMED
    clock.now += 29
    assert await store.claim("a") is IN_FLIGHT
    clock.now += 2  # the claimer died: a retry may run it
    assert await store.claim("a") is CLAIMED


@pytest.mark.asyncio
async def test_default_retention_covers_a_three_day_retry_horizon(
    make_store: StoreFactory,
) -> None:
    clock = Clock()
    store = make_store(clock=clock)
    await store.claim("a")
    await store.complete("a")
    clock.now += 3 * 24 * 3600 + 3600
    assert await store.claim("a") is DONE


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"retention_s": 0}, id="zero-retention"),
        pytest.param({"lease_s": -1}, id="negative-lease"),
        pytest.param({"retention_s": 10, "lease_s": 20}, id="lease-above-retention"),
        pytest.param({"retention_s": float("inf")}, id="infinite"),
        pytest.param({"retention_s": True}, id="bool"),
    ],
)
def test_invalid_windows_are_configuration_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        MemoryDedupeStore(**kwargs)  # type: ignore[arg-type]


def test_memory_store_is_bounded() -> None:
    store = MemoryDedupeStore(max_entries=3, clock=Clock())

    async def fill() -> None:
        for key in "abcd":
            await store.claim(key)
            await store.complete(key)
        assert await store.claim("d") is DONE
        assert await store.claim("a") is CLAIMED  # the oldest was evicted early

    asyncio.run(fill())
    assert store.evicted >= 1
    assert len(store) <= 3


def test_memory_store_purges_expired_ids_as_it_goes() -> None:
    clock = Clock()
    store = MemoryDedupeStore(retention_s=10, lease_s=5, clock=clock)

    async def run() -> None:
        for index in range(5):
            await store.claim(str(index))
            await store.complete(str(index))
        clock.now += 11
        for index in range(64):  # sweeps are amortised over claims
            await store.claim(f"new-{index}")

    asyncio.run(run())
    assert len(store) == 64  # the five expired ids were swept


@pytest.mark.asyncio
async def test_sqlite_store_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "dedupe.db"
    first = SQLiteDedupeStore(path)
    assert await first.claim("done") is CLAIMED
    await first.complete("done")
    assert await first.claim("abandoned") is CLAIMED  # process "dies" mid-handler
    await first.aclose()
    second = SQLiteDedupeStore(path)
    try:
        assert await second.claim("done") is DONE
        assert await second.claim("abandoned") is IN_FLIGHT  # until its lease ends
        assert await second.claim("fresh") is CLAIMED
    finally:
        await second.aclose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


@pytest.mark.asyncio
async def test_sqlite_stores_sharing_a_file_run_an_id_once(tmp_path: Path) -> None:
    """Two workers (two stores on one file) claiming the same ids: exactly one wins each."""
    a = SQLiteDedupeStore(tmp_path / "shared.db")
    b = SQLiteDedupeStore(tmp_path / "shared.db")
    try:
        results = await asyncio.gather(
            *(store.claim(f"id-{i}") for i in range(50) for store in (a, b))
        )
        for i in range(50):
            pair = results[2 * i : 2 * i + 2]
            assert sorted(s.value for s in pair) == ["claimed", "in-flight"]
    finally:
        await a.aclose()
        await b.aclose()


@pytest.mark.asyncio
async def test_sqlite_claim_waits_off_the_loop_while_another_process_writes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "locked.db"
    store = SQLiteDedupeStore(path, busy_timeout_s=60.0)
    # Used from the watchdog thread too, only if the loop is found blocked.
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    loop = asyncio.get_running_loop()
    answered = threading.Event()
    blocked: list[bool] = []

    def watchdog() -> None:
        # Queued behind the claim's first step: the loop runs it only if that step returned.
        loop.call_soon_threadsafe(answered.set)
        # A liveness guard, not a timing check: a claim waiting for the lock on the loop
        # would hold it for busy_timeout_s (60 s); release the lock so the test can end.
        if not answered.wait(10):
            blocked.append(True)
            blocker.execute("COMMIT")

    try:
        blocker.execute("BEGIN IMMEDIATE")  # holds the write lock, as another worker might
        claim = asyncio.ensure_future(store.claim("a"))
        thread = threading.Thread(target=watchdog)
        thread.start()
        await asyncio.to_thread(thread.join)
        assert not blocked, "the claim waited for the lock on the event loop"
        assert not claim.done()  # it waits on the store's thread meanwhile
        blocker.execute("COMMIT")
        assert await asyncio.wait_for(claim, 30) is CLAIMED
    finally:
        blocker.close()
        await store.aclose()


@pytest.mark.asyncio
async def test_sqlite_maintenance_purges_expired_ids(tmp_path: Path) -> None:
    clock = Clock()
    store = SQLiteDedupeStore(tmp_path / "m.db", retention_s=10, lease_s=5, clock=clock)
    try:
        for index in range(20):
            await store.claim(str(index))
            await store.complete(str(index))
        clock.now += 11
        store.maintain()
        with sqlite3.connect(tmp_path / "m.db") as conn:
            count = conn.execute("SELECT count(*) FROM mtls_hooks_dedupe").fetchone()[0]
        conn.close()
        assert count == 0
    finally:
        await store.aclose()


@pytest.mark.parametrize("path", [":memory:", ""])
def test_sqlite_store_refuses_memory_paths(path: str) -> None:
    with pytest.raises(ConfigurationError, match="MemoryDedupeStore"):
        SQLiteDedupeStore(path)


def test_sqlite_store_reports_an_unusable_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="dedupe database"):
        SQLiteDedupeStore(tmp_path / "missing-dir" / "x.db")


@pytest.mark.asyncio
async def test_sqlite_closed_store_refuses_work(tmp_path: Path) -> None:
    store = SQLiteDedupeStore(tmp_path / "c.db")
    await store.aclose()
    await store.aclose()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await store.claim("a")


def test_stores_satisfy_the_protocol(tmp_path: Path) -> None:
    sqlite_store = SQLiteDedupeStore(tmp_path / "p.db")
    try:
        assert isinstance(sqlite_store, DedupeStore)
        assert isinstance(MemoryDedupeStore(), DedupeStore)
    finally:
        sqlite_store.close()
