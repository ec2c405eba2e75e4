"""What only the PostgreSQL store does: NOTIFY wake-ups across processes, SKIP LOCKED claims."""

from __future__ import annotations

import threading
from urllib.parse import quote

import psycopg

from mtls_hooks.queue import NewJob, open_store


def test_notify_wakes_a_listener_of_another_store_object_only_on_commit(pg_url: str) -> None:
    listener, writer = open_store(pg_url), open_store(pg_url)
    woken = threading.Event()
    try:
        listener.subscribe(woken.set)
        assert woken.wait(10)  # the listener connected and LISTENs (it wakes once to catch up)
        woken.clear()
        with psycopg.connect(pg_url, autocommit=True) as watcher:
            channel = writer.channel  # type: ignore[attr-defined]
            watcher.execute(f"LISTEN {channel}")
            with psycopg.connect(pg_url) as conn:  # an application's transaction, rolled back
                with conn.cursor() as cursor:
                    writer.enqueue_on(cursor, NewJob("outbox", "ep", b"{}"))  # type: ignore[attr-defined]
                conn.rollback()
            # Notifications arrive in commit order: nothing may come before this marker.
            watcher.execute(f"NOTIFY {channel}, 'marker'")
            before = [n.payload for n in watcher.notifies(timeout=10, stop_after=1)]
            assert before == ["marker"]
            writer.enqueue(NewJob("outbox", "ep", b"{}"))
            assert [n.payload for n in watcher.notifies(timeout=10, stop_after=1)] == ["outbox"]
        assert woken.wait(10)  # and the other store object's listener woke
        assert [j.state.value for j in writer.jobs("outbox")] == ["pending"]
    finally:
        listener.close()
        writer.close()


def test_claims_skip_rows_another_transaction_locks(pg_url: str) -> None:
    # lock_timeout: a claim that waited for the lock would fail in 5 s instead of hanging.
    store = open_store(pg_url + quote(" -clock_timeout=5000"))
    try:
        first, _ = store.enqueue(NewJob("outbox", "ep", b"{}"))
        second, _ = store.enqueue(NewJob("outbox", "ep", b"{}"))
        with psycopg.connect(pg_url) as conn:
            conn.execute("SELECT 1 FROM mtls_hooks_jobs WHERE id = %s FOR UPDATE", (first,))
            # The first row is locked elsewhere: the claim takes the second without waiting.
            claimed = store.claim("outbox", "w1", limit=2, lease_s=60)
            assert [j.id for j in claimed] == [second]
            conn.rollback()
        assert [j.id for j in store.claim("outbox", "w1", limit=2, lease_s=60)] == [first]
    finally:
        store.close()
