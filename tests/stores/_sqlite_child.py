"""The body of a spawned process that completes an id and is killed at once (SIGKILL).

Imported by spawned processes (``multiprocessing`` spawn), so it holds nothing but this.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from mtls_hooks.stores._replay import ClaimState, SQLiteDedupeStore


def complete_then_die(path: str, synchronous: str) -> None:
    """Claim and complete ``done``, claim ``held``, then die before anything else runs.

    The kill comes from the process itself, right after :meth:`complete` returned: nothing
    queued behind it (a flush on the next event-loop turn, the store's close) gets to run.
    """

    async def work() -> None:
        store = SQLiteDedupeStore(path, synchronous=synchronous)
        assert await store.claim("done") is ClaimState.CLAIMED
        assert await store.claim("held") is ClaimState.CLAIMED
        await store.complete("done")
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(work())


def open_together(paths: list[str], barrier: Any, results: Any, kind: str = "dedupe") -> None:
    """Open (and close) a store (``kind``: the dedupe store or the queue, which share
    ``open_wal``) on each new file of ``paths`` at the instant the other process opens it (one
    barrier per file); put ``"ok"`` or the error's text for each."""
    from mtls_hooks.queue._sqlite import SQLiteQueueStore

    store_class = SQLiteDedupeStore if kind == "dedupe" else SQLiteQueueStore
    for path in paths:
        barrier.wait(30)
        try:
            store_class(path).close()
        except Exception as exc:  # reported to the test, which fails on it
            results.put(f"{type(exc).__name__}: {exc}")
        else:
            results.put("ok")
