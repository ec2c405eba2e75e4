"""The body of one racing process: its own store on the shared database, claims after a barrier.

Imported by spawned processes (``multiprocessing`` spawn), so it holds nothing but this.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from mtls_hooks.stores._replay import ClaimState
from tests.stores._backends import Spec

CONCURRENCY = 8


def claim_all(spec: Spec, ids: list[str], seed: int, barrier: Any, results: Any) -> None:
    """Claim every id of ``ids`` once the barrier opens; report the ids this process won.

    Each process claims in its own order (shuffled by ``seed``), so that the processes meet on
    every id at some point instead of one of them leading all the way.
    """
    ids = list(ids)
    random.Random(seed).shuffle(ids)
    try:
        results.put(asyncio.run(_claim_all(spec, ids, barrier)))
    except BaseException as exc:
        barrier.abort()  # the others stop waiting at once
        results.put(f"{type(exc).__name__}: {exc}")
        raise


ROUNDS = 10


async def _claim_all(spec: Spec, ids: list[str], barrier: Any) -> list[str]:
    store = spec.open()
    try:
        await store.claim("warm-up " + str(id(store)))  # connect before the race starts
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(webhook_id: str) -> str | None:
            async with gate:
                state = await store.claim(webhook_id)
            return webhook_id if state is ClaimState.CLAIMED else None

        # Rounds behind the barrier: every process claims its next tenth at the same time as
        # the others, so none can finish before another starts (a loaded machine may
        # schedule one process long before the rest), and each round meets ids the others
        # claim in that round or have claimed before.
        won: list[str | None] = []
        step = max(1, len(ids) // ROUNDS)
        for start in range(0, len(ids), step):
            await asyncio.to_thread(barrier.wait, 60)
            won += await asyncio.gather(*(one(i) for i in ids[start : start + step]))
        return [webhook_id for webhook_id in won if webhook_id is not None]
    finally:
        await store.aclose()
