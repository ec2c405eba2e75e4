"""The SQLite dedupe store's group commit, its in-process front, and what a completion survives.

The claim / complete / release contract itself, and the multi-process claim race, are in
``test_conformance.py``; these tests pin what the faster path must not change.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.stores._replay import ClaimState, SQLiteDedupeStore
from tests.stores._backends import Clock
from tests.stores._sqlite_child import complete_then_die, open_together

CLAIMED, DONE, IN_FLIGHT = ClaimState.CLAIMED, ClaimState.DONE, ClaimState.IN_FLIGHT
Opener = Callable[..., SQLiteDedupeStore]


@pytest_asyncio.fixture
async def open_store(tmp_path: Path) -> AsyncIterator[Opener]:
    """Open stores on one file of the test; every one is closed after the test."""
    opened: list[SQLiteDedupeStore] = []

    def factory(**kwargs: object) -> SQLiteDedupeStore:
        store = SQLiteDedupeStore(tmp_path / "dedupe.db", **kwargs)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.aclose()


def row_of(path: Path, key: str) -> tuple[int, float] | None:
    """The id's row as another connection (another process) reads it now."""
    conn = sqlite3.connect(path)
    try:
        row = conn.execute(
            "SELECT done, expires_at FROM mtls_hooks_dedupe WHERE key = ?", (key,)
        ).fetchone()
    finally:
        conn.close()
    return None if row is None else (int(row[0]), float(row[1]))


@pytest.mark.asyncio
async def test_claims_of_one_loop_turn_share_one_transaction(open_store: Opener) -> None:
    store = open_store()
    ids = [f"ep id-{n}" for n in range(20)]
    before = store.transactions
    assert await asyncio.gather(*(store.claim(i) for i in ids)) == [CLAIMED] * 20
    assert store.transactions == before + 1
    await asyncio.gather(*(store.complete(i) for i in ids))
    assert store.transactions == before + 2


@pytest.mark.asyncio
async def test_claims_awaited_one_by_one_each_commit_on_their_own(open_store: Opener) -> None:
    store = open_store()
    before = store.transactions
    for n in range(3):
        assert await store.claim(f"ep id-{n}") is CLAIMED
    assert store.transactions == before + 3


@pytest.mark.asyncio
async def test_one_id_claimed_many_times_in_one_batch_is_claimed_once(
    open_store: Opener,
) -> None:
    store = open_store()
    before = store.transactions
    states = await asyncio.gather(*(store.claim("ep a") for _ in range(5)))
    assert sorted(s.value for s in states) == ["claimed"] + ["in-flight"] * 4
    assert store.transactions == before + 1


@pytest.mark.asyncio
async def test_claim_and_completion_are_committed_when_they_return(
    open_store: Opener, tmp_path: Path
) -> None:
    clock = Clock()
    store = open_store(clock=clock, lease_s=30, retention_s=3600)
    assert row_of(tmp_path / "dedupe.db", "ep a") is None
    assert await store.claim("ep a") is CLAIMED
    assert row_of(tmp_path / "dedupe.db", "ep a") == (0, clock.now + 30)
    await store.complete("ep a")
    assert row_of(tmp_path / "dedupe.db", "ep a") == (1, clock.now + 3600)


@pytest.mark.slow
@pytest.mark.parametrize("synchronous", ["normal", "full"])
def test_a_completion_survives_the_process_killed_right_after(
    synchronous: str, tmp_path: Path
) -> None:
    """The receiver answers 204 after complete() returns: a kill -9 then loses nothing."""
    path = tmp_path / "killed.db"
    context = multiprocessing.get_context("spawn")
    child = context.Process(target=complete_then_die, args=(str(path), synchronous))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail("the child did not finish")
    assert child.exitcode == -9  # killed by its own SIGKILL, not ended by an assertion

    async def after_restart() -> tuple[ClaimState, ClaimState]:
        store = SQLiteDedupeStore(path)
        try:
            return await store.claim("done"), await store.claim("held")
        finally:
            await store.aclose()

    assert asyncio.run(after_restart()) == (DONE, IN_FLIGHT)  # held: until its lease ends


@pytest.mark.asyncio
async def test_the_front_answers_own_ids_without_a_transaction(open_store: Opener) -> None:
    store = open_store()
    assert await store.claim("ep a") is CLAIMED
    before = store.transactions
    assert await store.claim("ep a") is IN_FLIGHT  # this process holds it
    assert store.transactions == before
    await store.complete("ep a")
    before = store.transactions
    assert await store.claim("ep a") is DONE  # this process completed it
    assert store.transactions == before


@pytest.mark.asyncio
async def test_without_a_done_cache_sqlite_answers_every_duplicate(open_store: Opener) -> None:
    store = open_store(done_cache_entries=0)
    await store.claim("ep a")
    await store.complete("ep a")
    before = store.transactions
    assert await store.claim("ep a") is DONE
    assert store.transactions == before + 1


@pytest.mark.asyncio
async def test_the_done_cache_is_bounded_and_sqlite_still_knows(open_store: Opener) -> None:
    store = open_store(done_cache_entries=2)
    for key in ("ep a", "ep b", "ep c"):
        await store.claim(key)
        await store.complete(key)
    before = store.transactions
    assert await store.claim("ep c") is DONE  # among the last two: the front answers
    assert store.transactions == before
    assert await store.claim("ep a") is DONE  # dropped from the front: SQLite answers
    assert store.transactions == before + 1


@pytest.mark.asyncio
async def test_the_front_defers_to_sqlite_once_its_own_lease_ended(open_store: Opener) -> None:
    """Another worker may take over an id whose lease this process let lapse."""
    clock = Clock()
    mine, theirs = open_store(clock=clock, lease_s=30), open_store(clock=clock, lease_s=30)
    assert await mine.claim("ep a") is CLAIMED
    clock.now += 31  # this process's handler outlived its lease
    assert await theirs.claim("ep a") is CLAIMED
    assert await mine.claim("ep a") is IN_FLIGHT  # SQLite says so: theirs holds it now
    await theirs.complete("ep a")
    assert await mine.claim("ep a") is DONE


@pytest.mark.asyncio
async def test_a_claim_cancelled_while_queued_does_not_hold_the_id(open_store: Opener) -> None:
    """A sender that hangs up mid-claim: its committed claim is released, not left to the lease."""
    store = open_store()
    task = asyncio.ensure_future(store.claim("ep a"))
    await asyncio.sleep(0)  # one turn: the task queues its claim; the batch runs next turn
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await store.claim("ep a") is CLAIMED


@pytest.mark.asyncio
async def test_a_claim_cancelled_while_its_batch_runs_on_the_thread_is_released(
    open_store: Opener,
) -> None:
    """FULL mode runs batches on the store's thread: a caller cancelled meanwhile gets no
    answer, but its claim was committed; it is released, not left to its lease."""
    store = open_store(synchronous="full")
    other = open_store(synchronous="full")
    gate = threading.Event()
    # The store's single thread is busy: the claim's batch is taken and waits behind this.
    blocker = store._executor.submit(gate.wait, 30)
    task = asyncio.ensure_future(store.claim("ep a"))
    await asyncio.sleep(0)  # the task submits its claim; the flush is queued
    await asyncio.sleep(0)  # the flush hands the batch to the thread: no longer droppable
    assert not store._writer._pending
    assert store._writer._scheduled
    task.cancel()
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    blocker.result(timeout=30)
    await asyncio.wait_for(store._writer.drain(), 30)  # the claim, then its release
    assert await other.claim("ep a") is CLAIMED  # another worker's view of the file


@pytest.mark.asyncio
async def test_a_claim_that_ran_before_the_caller_returned_holds_the_id(open_store: Opener) -> None:
    """The twin: an answered claim is the caller's, and another worker sees it in flight."""
    store = open_store(synchronous="full")
    other = open_store(synchronous="full")
    assert await store.claim("ep a") is CLAIMED
    assert await other.claim("ep a") is IN_FLIGHT


@pytest.mark.asyncio
async def test_a_claim_waits_for_another_process_write_lock_without_blocking_the_loop(
    open_store: Opener, tmp_path: Path
) -> None:
    """Another process holds the write lock: the claim retries on the loop, which runs on."""
    store = open_store()
    holder = sqlite3.connect(tmp_path / "dedupe.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # the write lock, as another worker's commit holds it
        claim = asyncio.ensure_future(store.claim("ep a"))
        loop = asyncio.get_running_loop()
        ticks = 0
        until = loop.time() + 0.05
        while loop.time() < until:  # the loop keeps turning while the claim waits
            await asyncio.sleep(0.001)
            ticks += 1
        assert not claim.done()
        assert ticks >= 10
        holder.execute("COMMIT")
        assert await asyncio.wait_for(claim, 10) is CLAIMED
    finally:
        holder.close()
    row = row_of(tmp_path / "dedupe.db", "ep a")
    assert row is not None
    assert row[0] == 0  # claimed in the file, not done


@pytest.mark.asyncio
async def test_a_write_lock_held_past_busy_timeout_fails_the_claim(
    open_store: Opener, tmp_path: Path
) -> None:
    """The twin: held longer than busy_timeout_s, the claim fails with SQLite's busy error."""
    store = open_store(busy_timeout_s=0.2)
    holder = sqlite3.connect(tmp_path / "dedupe.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        started = asyncio.get_running_loop().time()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await asyncio.wait_for(store.claim("ep a"), 10)
        assert asyncio.get_running_loop().time() - started >= 0.2
        holder.execute("ROLLBACK")
    finally:
        holder.close()
    assert row_of(tmp_path / "dedupe.db", "ep a") is None
    assert await store.claim("ep a") is CLAIMED  # the next batch runs


@pytest.mark.asyncio
async def test_a_failed_batch_fails_each_caller_and_the_next_batch_runs(
    open_store: Opener, tmp_path: Path
) -> None:
    store = open_store()
    assert await store.claim("ep a") is CLAIMED
    conn = sqlite3.connect(tmp_path / "dedupe.db", isolation_level=None)
    try:
        conn.execute("ALTER TABLE mtls_hooks_dedupe RENAME TO moved")
        results = await asyncio.wait_for(
            asyncio.gather(*(store.claim(f"ep {n}") for n in range(3)), return_exceptions=True),
            30,
        )
        assert all(isinstance(r, sqlite3.OperationalError) for r in results), results
        conn.execute("ALTER TABLE moved RENAME TO mtls_hooks_dedupe")
    finally:
        conn.close()
    assert await asyncio.wait_for(store.claim("ep b"), 30) is CLAIMED


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("synchronous", "level", "on_loop"), [("normal", 1, True), ("full", 2, False)]
)
async def test_synchronous_mode_sets_the_pragma_and_where_commits_run(
    open_store: Opener, synchronous: str, level: int, on_loop: bool
) -> None:
    """FULL fsyncs each commit, so its batches run on the store's thread, never the loop."""
    store = open_store(synchronous=synchronous)
    threads: set[int] = set()
    for conn in (store._fast, store._slow):  # private: the pragma is the promise
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == level
        conn.set_trace_callback(lambda _: threads.add(threading.get_ident()))
    assert await store.claim("ep a") is CLAIMED
    await store.complete("ep a")
    assert await store.claim("ep a") is DONE
    assert threads
    assert (threads == {threading.get_ident()}) is on_loop


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"synchronous": "off"}, "synchronous must be"),
        ({"done_cache_entries": -1}, "done_cache_entries"),
        ({"done_cache_entries": True}, "done_cache_entries"),
    ],
)
def test_invalid_options_are_configuration_errors(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SQLiteDedupeStore(tmp_path / "x.db", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["dedupe", "queue"])
def test_workers_opening_one_new_file_together_all_start(tmp_path: Path, kind: str) -> None:
    """Two processes open the same new file at the same instant, twenty times over: SQLite's
    switch to WAL may answer "database is locked" at once to one of them (it did about one
    time in three), which is tried again instead of failing the worker's start."""
    context = multiprocessing.get_context("spawn")
    paths = [str(tmp_path / f"new-{index}.db") for index in range(20)]
    barrier = context.Barrier(2)
    results = context.Queue()
    children = [
        context.Process(target=open_together, args=(paths, barrier, results, kind))
        for _ in range(2)
    ]
    for child in children:
        child.start()
    try:
        outcomes = [results.get(timeout=60) for _ in range(2 * len(paths))]
    finally:
        for child in children:
            child.join(30)
    assert outcomes == ["ok"] * len(outcomes)


def test_a_file_locked_past_busy_timeout_fails_at_start(tmp_path: Path) -> None:
    """The twin: a lock held longer than busy_timeout_s is a clear start-up error."""
    path = tmp_path / "held.db"
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(ConfigurationError, match="database is locked"):
            SQLiteDedupeStore(path, busy_timeout_s=0.2)
    finally:
        holder.close()


@pytest.mark.parametrize("cancelled", [True, False], ids=["sender-gone", "sender-waits"])
def test_a_claim_cancelled_after_its_result_leaves_no_claim(
    tmp_path: Path, cancelled: bool
) -> None:
    """The view is cancelled (the sender hung up) after the batch set the claim's result but
    before the view resumed: the committed claim is released, so the retry is not answered
    "in flight" for a whole lease. The twin, not cancelled, holds the id."""

    async def scenario() -> tuple[bool, ClaimState]:
        store = SQLiteDedupeStore(tmp_path / "race.db", synchronous="normal")
        try:
            await store.claim("warm")  # the file is open and the writer idle
            task = asyncio.create_task(store.claim("k"))
            await asyncio.sleep(0)  # the task submits: its batch runs in the next turn
            if cancelled:
                asyncio.get_running_loop().call_soon(task.cancel)  # in that same turn
            try:
                await task
            except asyncio.CancelledError:
                was_cancelled = True
            else:
                was_cancelled = False
            return was_cancelled, await store.claim("k")
        finally:
            await store.aclose()

    was_cancelled, retry = asyncio.run(scenario())
    assert was_cancelled is cancelled
    assert retry is (ClaimState.CLAIMED if cancelled else ClaimState.IN_FLIGHT)
