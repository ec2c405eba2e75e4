"""The inbox: verified webhooks stored durably before the sender hears 202, then handled.

A webhook endpoint in inbox mode (``mode="inbox"``) runs every check of the direct mode
(identity, source, rate limit, credentials, type, size, signature, timestamp, JSON), then,
instead of claiming the id and running the handler while the sender waits, commits the
verified event as a job of the queue engine (SQLite or PostgreSQL, the outbox's engine) and
answers ``202 Accepted``. Handlers run from there (:mod:`mtls_hooks.inbox._worker`), in the
receiver's workers or in ``mtls-hooks process-inbox``, with retries, backoff and a dead letter.

:meth:`Inbox.accept` groups the events of one event-loop turn into one transaction
(``enqueue_many``) written on a private thread, so a busy receiver pays the database's fixed
cost per commit (and SQLite's fsync, with the default ``synchronous=full``) once per batch,
and the event loop never waits for a disk. The 202 leaves only after the commit: a crash at
any point after it loses nothing.

With a PostgreSQL inbox, :meth:`Inbox.transactional` gives a handler a connection inside a
transaction that also marks its event done: the handler's writes and the done mark commit
together or not at all, so its effects happen exactly once under at-least-once handling.

The methods without ``accept`` are the operator's view, the same verbs as the outbox's:
status, messages, show, retry (the dead letter) and purge.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, Self, TypeVar

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.core._events import WebhookEvent
from mtls_hooks.core._suggest import did_you_mean
from mtls_hooks.inbox._envelope import QUEUE, job_for_event
from mtls_hooks.inbox._worker import current_claim
from mtls_hooks.queue._protocol import (
    AttemptRecord,
    Job,
    JobState,
    NewJob,
    QueueStats,
    QueueStore,
    Settlement,
    StoreUnavailableError,
    check_seconds,
)
from mtls_hooks.queue._sqlite import SQLiteQueueStore
from mtls_hooks.queue._view import QueueView
from mtls_hooks.stores._batch import Batcher

__all__ = ["Inbox"]

# Events per transaction at most, and transactions on their way at once (PostgreSQL runs
# them side by side; SQLite gets one, see Inbox.__init__).
_MAX_BATCH: Final = 64
_MAX_FLIGHTS: Final = 4
# Connections of the asyncio pool that transactional handlers write on.
_TRANSACTIONAL_CONNECTIONS: Final = 8
_R = TypeVar("_R")


class _LeaseLostError(Exception):
    pass


class Inbox(QueueView):
    """Where verified webhooks wait for their handler; see the module docstring.

    Example::

        inbox = Inbox("sqlite:///var/lib/hooks/inbox.sqlite3")
        print(inbox.status().by_state)
    """

    def __init__(self, store: QueueStore | str, *, clock: Callable[[], float] = time.time) -> None:
        """Use ``store``: a :class:`~mtls_hooks.queue.QueueStore` or a store URL.

        Raises:
            ConfigurationError: a malformed URL.
            StoreUnavailableError: the database cannot be opened or reached.
        """
        super().__init__(store, clock=clock)
        self._executor: ThreadPoolExecutor | None = None
        self._async_pool: Any = None  # psycopg_pool.AsyncConnectionPool, opened on first use
        # SQLite has one writer: a second transaction would only wait for the first's lock,
        # with the few events that came meanwhile. One at a time, everything that arrives
        # during a commit (its fsync) goes into the next, so more events share each fsync:
        # 357 -> 321 us of server CPU per event at 16 connections (bench/bench_inbox.py).
        flights = 1 if isinstance(self.store, SQLiteQueueStore) else _MAX_FLIGHTS
        self._batcher: Batcher[NewJob, tuple[str, bool]] = Batcher(
            self._write, max_batch=_MAX_BATCH, max_flights=flights
        )

    queue = QUEUE
    noun = "event"

    @property
    def url(self) -> str:
        """The store's URL as given, password included: show ``repr(inbox)`` instead."""
        return self.store.url

    # -- accepting ----------------------------------------------------------------------

    async def accept(self, event: WebhookEvent) -> bool:
        """Commit ``event``; True once stored, False when the inbox already had it.

        Raises:
            StoreUnavailableError: the database cannot be reached: nothing was stored.
        """
        _, created = await self._batcher.submit(job_for_event(event))
        return created

    async def _write(self, jobs: Sequence[NewJob]) -> list[tuple[str, bool]]:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self._batcher.max_flights, thread_name_prefix="mtls-hooks-inbox"
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.store.enqueue_many, jobs)

    # -- exactly-once effects (PostgreSQL) ----------------------------------------------

    def transactional(
        self, handler: Callable[[WebhookEvent, Any], Awaitable[_R]]
    ) -> Callable[[WebhookEvent], Awaitable[_R]]:
        """Run ``handler`` in a transaction that also marks its inbox event done.

        The wrapped handler takes the event and a :class:`psycopg.AsyncConnection` inside an
        open transaction on the inbox's database. When it returns, the event's done mark is
        written in that transaction, fenced by the worker's lease, and both commit together;
        when it raises, both roll back and the event is retried. A worker killed at any
        point leaves either both or neither, so the effects happen exactly once::

            @hooks.on("invoice.paid")
            @inbox.transactional
            async def paid(event: WebhookEvent, conn: psycopg.AsyncConnection) -> None:
                await conn.execute("INSERT INTO ledger VALUES (%s)", (event.id,))

        The done mark is written last, so the event's row is locked only while committing
        (the worker's heartbeat never waits for a slow handler).

        Raises:
            ConfigurationError: the inbox is not PostgreSQL; or (from the wrapped handler)
                it was called outside an inbox worker (an endpoint in direct mode).
            StoreUnavailableError: (from the wrapped handler) the database failed, or the
                worker's lease on the event was lost (another worker took it over); nothing
                was committed.
        """
        store = self.store
        settle_on = getattr(store, "asettle_on", None)
        if settle_on is None:
            raise ConfigurationError(
                f"transactional inbox handlers need a PostgreSQL inbox, not {store!r}"
            )

        @functools.wraps(handler)
        async def run(event: WebhookEvent) -> _R:
            import psycopg

            claim = current_claim.get()
            if claim is None:
                raise ConfigurationError(
                    f"{handler.__qualname__} is an inbox handler (Inbox.transactional): it runs "
                    "only from the inbox, on an endpoint with mode='inbox'"
                )
            job_id, owner = claim
            try:
                pool = await self._transaction_pool()
                async with pool.connection() as conn, conn.transaction():
                    result = await handler(event, conn)
                    if not await settle_on(conn, owner, Settlement(job_id, "done")):
                        raise _LeaseLostError
            except _LeaseLostError:
                raise StoreUnavailableError(
                    f"the lease on inbox event {job_id} was lost (another worker took it "
                    "over); nothing was committed"
                ) from None
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise StoreUnavailableError(f"inbox {store!r} failed: {first}") from exc
            return result

        return run

    async def _transaction_pool(self) -> Any:
        if self._async_pool is None:
            pool = self.store.async_pool(max_size=_TRANSACTIONAL_CONNECTIONS)  # type: ignore[attr-defined]
            await pool.open()
            self._async_pool = pool
        return self._async_pool

    # -- the operator's view ------------------------------------------------------------

    def _check_target(self, name: str) -> None:
        # The inbox keeps no endpoint records: an endpoint it holds no event of is a typo.
        known = self.store.stats(QUEUE).by_target
        if name not in known:
            raise ConfigurationError(
                f"the inbox holds no event of endpoint {name!r}{did_you_mean(name, known)}"
            )

    def status(self) -> QueueStats:
        """Counts by state and endpoint, and the age of the oldest due event."""
        return self.store.stats(QUEUE)

    def messages(
        self, *, state: JobState | None = None, endpoint: str | None = None, limit: int = 100
    ) -> list[Job]:
        """Stored events, oldest first (``state=JobState.FAILED``: the dead letter)."""
        return self.store.jobs(QUEUE, state=state, target=endpoint, limit=limit)

    def show(self, job_id: str) -> tuple[Job, list[AttemptRecord]]:
        """One stored event and its handler runs.

        Raises:
            ConfigurationError: no inbox event has that id.
        """
        return self._show(job_id)

    def retry(
        self, job_ids: Sequence[str] = (), *, endpoint: str | None = None, all_failed: bool = False
    ) -> int:
        """Replay dead-lettered events: these ids, an endpoint's, or all; returns how many.

        Raises:
            ConfigurationError: not exactly one of ids, ``endpoint`` and ``all_failed``.
        """
        return self._retry(job_ids, endpoint, all_failed)

    def purge(self, *, older_than_s: float) -> int:
        """Delete handled and dead-lettered events last updated that long ago.

        A purged event's id is forgotten: a sender's late retry of it is stored and handled
        again. Keep events at least as long as senders retry (Standard Webhooks senders:
        about three days).
        """
        return self.store.purge(
            QUEUE, older_than_s=check_seconds("older_than_s", older_than_s, zero=True)
        )

    # -- closing ------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Wait for the writes on their way, then close what this inbox opened."""
        await self._batcher.aclose()
        pool, self._async_pool = self._async_pool, None
        if pool is not None:
            await pool.close()
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown)
        await asyncio.get_running_loop().run_in_executor(None, self._close_store)

    def close(self) -> None:
        """Close what this inbox opened (blocking code: the CLI)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown()
        self._close_store()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
