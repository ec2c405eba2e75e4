"""Real concurrency: separate processes, each with its own store object on one database,
claim the same jobs behind a barrier. Each job is claimed exactly once."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from mtls_hooks.queue import NewJob, open_store
from tests.queue.conftest import pg_schema

JOBS = 120
PROCESSES = 3


def _claimer(url: str, owner: str, barrier: Barrier, out: multiprocessing.Queue[list[str]]) -> None:
    store = open_store(url)
    claimed: list[str] = []
    try:
        barrier.wait(30)
        while batch := store.claim("outbox", owner, limit=4, lease_s=600):
            claimed += [job.id for job in batch]
    finally:
        store.close()
        out.put(claimed)


def _race(url: str) -> Counter[str]:
    store = open_store(url)
    ids = {store.enqueue(NewJob("outbox", "ep", b"{}"))[0] for _ in range(JOBS)}
    store.close()
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    out: multiprocessing.Queue[list[str]] = context.Queue()
    procs = [
        context.Process(target=_claimer, args=(url, f"w{i}", barrier, out))
        for i in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    try:
        claims = Counter(job_id for _ in procs for job_id in out.get(timeout=60))
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():  # pragma: no cover - only on a hang
                proc.kill()
    assert set(claims) == ids
    return claims


@pytest.mark.slow
def test_sqlite_processes_claim_each_job_once(tmp_path: Path) -> None:
    claims = _race(f"sqlite:///{tmp_path / 'q.sqlite3'}?synchronous=normal")
    assert max(claims.values()) == 1


@pytest.mark.slow
def test_postgresql_processes_claim_each_job_once() -> None:
    with pg_schema() as url:
        claims = _race(url)
    assert max(claims.values()) == 1
