"""One claim / complete / release contract, and every dedupe store meets it.

Parametrised over the memory, SQLite, PostgreSQL and Redis stores (``spec`` fixture). Expiry
is tested with an injected clock where the store takes one; Redis expires keys on its own
clock, so its windows are checked through the keys' TTLs and short real leases
(``tests/stores/test_shared_stores.py``).

Concurrency is real: separate processes (spawned), each with its own store object on one
database, claim the same ids behind a :class:`multiprocessing.Barrier`; every id must be
claimed exactly once. The memory store, which lives in one process, races tasks instead.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
from pathlib import Path

import pytest

from mtls_hooks.stores._replay import ClaimState, DedupeStore
from tests.stores._backends import SHARED, Clock, Spec
from tests.stores._race import claim_all
from tests.stores.conftest import StoreFactory, spec_for

CLAIMED, DONE, IN_FLIGHT = ClaimState.CLAIMED, ClaimState.DONE, ClaimState.IN_FLIGHT


def needs_clock(spec: Spec) -> None:
    if not spec.clocked:
        pytest.skip("Redis expires keys on its own clock: see test_shared_stores.py")


@pytest.mark.asyncio
async def test_claim_complete_then_duplicate(make_store: StoreFactory) -> None:
    store = make_store(clock=Clock())
    assert await store.claim("ep a") is CLAIMED
    assert await store.claim("ep a") is IN_FLIGHT  # the concurrent twin
    await store.complete("ep a")
    assert await store.claim("ep a") is DONE
    assert await store.claim("ep b") is CLAIMED  # other ids are independent
    assert await store.claim("other a") is CLAIMED  # the same id on another endpoint


@pytest.mark.asyncio
async def test_release_lets_a_retry_run_again(make_store: StoreFactory) -> None:
    store = make_store(clock=Clock())
    assert await store.claim("ep a") is CLAIMED
    await store.release("ep a")
    assert await store.claim("ep a") is CLAIMED


@pytest.mark.asyncio
async def test_release_never_forgets_a_done_id(make_store: StoreFactory) -> None:
    store = make_store(clock=Clock())
    await store.claim("ep a")
    await store.complete("ep a")
    await store.release("ep a")
    assert await store.claim("ep a") is DONE


@pytest.mark.asyncio
async def test_retention_window_ends(spec: Spec, make_store: StoreFactory) -> None:
    needs_clock(spec)
    clock = Clock()
    store = make_store(clock=clock, retention_s=3600, lease_s=60)
    await store.claim("ep a")
    await store.complete("ep a")
    clock.now += 3599
    assert await store.claim("ep a") is DONE
    clock.now += 2
    assert await store.claim("ep a") is CLAIMED


@pytest.mark.asyncio
async def test_lease_of_an_abandoned_claim_ends(spec: Spec, make_store: StoreFactory) -> None:
    needs_clock(spec)
    clock = Clock()
    store = make_store(clock=clock, lease_s=30)
    assert await store.claim("ep a") is CLAIMED
    clock.now += 29
    assert await store.claim("ep a") is IN_FLIGHT
    clock.now += 2  # the claimer died: a retry may run it
    assert await store.claim("ep a") is CLAIMED


@pytest.mark.asyncio
async def test_default_retention_covers_a_three_day_retry_horizon(
    spec: Spec, make_store: StoreFactory
) -> None:
    needs_clock(spec)
    clock = Clock()
    store = make_store(clock=clock)
    await store.claim("ep a")
    await store.complete("ep a")
    clock.now += 3 * 24 * 3600 + 3600
    assert await store.claim("ep a") is DONE


@pytest.mark.asyncio
async def test_a_second_store_on_the_database_sees_the_first_ones_ids(
    spec: Spec, make_store: StoreFactory
) -> None:
    if spec.backend not in SHARED:
        pytest.skip("the memory store is one process's")
    clock = Clock()
    first, second = make_store(clock=clock), make_store(clock=clock)
    assert await first.claim("ep a") is CLAIMED
    assert await second.claim("ep a") is IN_FLIGHT
    await first.complete("ep a")
    assert await second.claim("ep a") is DONE


@pytest.mark.asyncio
async def test_tasks_racing_in_one_process_claim_each_id_once(make_store: StoreFactory) -> None:
    store = make_store()
    ids = [f"ep id-{n}" for n in range(40)]
    states = await asyncio.gather(*(store.claim(i) for i in ids for _ in range(4)))
    claimed = [ids[n // 4] for n, state in enumerate(states) if state is CLAIMED]
    assert sorted(claimed) == sorted(ids)


@pytest.mark.asyncio
async def test_stores_satisfy_the_protocol(make_store: StoreFactory) -> None:
    assert isinstance(make_store(), DedupeStore)


@pytest.mark.slow
@pytest.mark.parametrize("backend", SHARED)
def test_processes_racing_on_one_database_claim_each_id_exactly_once(
    backend: str, tmp_path: Path
) -> None:
    """Three processes, each with its own store on one database, claim 1,000 ids at once."""
    spec = spec_for(backend, tmp_path)
    processes = 3
    ids = [f"race id-{n}" for n in range(1000)]
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    workers = [
        context.Process(target=claim_all, args=(spec, ids, seed, barrier, results))
        for seed in range(processes)
    ]
    try:
        for worker in workers:
            worker.start()
        won: list[list[str] | str] = []
        for _ in workers:
            try:
                won.append(results.get(timeout=120))
            except queue.Empty:
                pytest.fail(f"a racing process reported nothing: {[w.exitcode for w in workers]}")
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
                worker.join()
        spec.drop()
    failures = [claims for claims in won if isinstance(claims, str)]
    assert not failures
    every_claim = sorted(webhook_id for claims in won for webhook_id in claims)
    assert every_claim == sorted(ids)  # each id once: none twice, none lost
    # The race was real: no process won everything.
    assert all(len(claims) < len(ids) for claims in won), [len(c) for c in won]
