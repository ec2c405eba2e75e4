"""The outbox: ``enqueue`` commits a webhook durably and returns its id; workers deliver it.

:class:`Outbox` and :class:`AsyncOutbox` are twins with one shape, like the senders: the
base class does the work that needs no I/O (find the endpoint, serialise the payload, build
the job) and every store call goes through one place; the async twin runs the same calls on
a thread. The message id is the ``webhook-id`` of every attempt, across workers and restarts.

With a SQL store, ``enqueue(..., connection=conn)`` inserts on the caller's own connection
(psycopg for PostgreSQL, sqlite3 for SQLite), inside the caller's transaction: the event
commits or rolls back with the business write, so there is no dual write to get wrong.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple, Self

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.core._suggest import did_you_mean
from mtls_hooks.outbox._endpoint import Endpoint
from mtls_hooks.queue._protocol import (
    AttemptRecord,
    Job,
    JobState,
    NewJob,
    QueueStats,
    QueueStore,
)
from mtls_hooks.queue._view import QueueView

__all__ = ["QUEUE", "AsyncOutbox", "EndpointStatus", "Outbox", "UnknownEndpointError"]

#: The queue name of outbox jobs in the engine's tables.
QUEUE: Final = "outbox"
# A known endpoint is looked up again after this long (its FIFO flag may change).
_ENDPOINT_TTL_S: Final = 5.0


class UnknownEndpointError(ConfigurationError):
    """``enqueue`` named an endpoint that no record defines."""


class EndpointStatus(NamedTuple):
    """An endpoint record with the state the workers keep beside it."""

    endpoint: Endpoint
    enabled: bool
    disabled_reason: str | None
    failing_since: float | None


def encode_payload(payload: object, event_type: str | None, now: float) -> bytes:
    """The exact bytes every attempt will send.

    A payload with an ``event_type`` is wrapped in the Standard Webhooks envelope
    ``{"type", "timestamp", "data"}``, stamped once, at enqueue time.

    Raises:
        ConfigurationError: a payload that is not JSON-serialisable, or bytes with a type.
    """
    if isinstance(payload, bytes | bytearray | memoryview):
        if event_type is not None:
            raise ConfigurationError("event_type wraps a payload; bytes are sent verbatim")
        return bytes(payload)
    if event_type is not None:
        stamp = dt.datetime.fromtimestamp(now, dt.UTC).isoformat(timespec="milliseconds")
        payload = {"type": event_type, "timestamp": stamp.replace("+00:00", "Z"), "data": payload}
    try:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"payload is not JSON-serialisable: {exc}") from exc


class _OutboxBase(QueueView):
    queue = QUEUE
    noun = "message"

    def __init__(self, store: QueueStore | str, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(store, clock=clock)
        self._known: dict[str, tuple[Endpoint, float]] = {}

    # -- the work without I/O, and the one place that calls the store ------------------

    def _endpoint(self, name: str) -> Endpoint:
        known = self._known.get(name)
        now = time.monotonic()
        if known is not None and now - known[1] < _ENDPOINT_TTL_S:
            return known[0]
        target = self.store.get_target(name)
        if target is None:
            names = [t.name for t in self.store.targets()]
            raise UnknownEndpointError(f"unknown endpoint {name!r}{did_you_mean(name, names)}")
        endpoint = Endpoint.from_config(name, target.config)
        self._known[name] = (endpoint, now)
        return endpoint

    def _job(
        self,
        endpoint: str | Endpoint,
        payload: object,
        event_type: str | None,
        idempotency_key: str | None,
    ) -> NewJob:
        name = endpoint.name if isinstance(endpoint, Endpoint) else endpoint
        record = self._endpoint(name)
        body = encode_payload(payload, event_type, self._clock())
        if idempotency_key is not None and not isinstance(idempotency_key, str):
            raise ConfigurationError("idempotency_key must be a string")
        return NewJob(
            QUEUE,
            name,
            body,
            meta={"event_type": event_type} if event_type else {},
            idempotency_key=idempotency_key,
            fifo_key=name if record.fifo else None,
        )

    def _enqueue_on(self, connection: Any, job: NewJob) -> str:
        enqueue_on = getattr(self.store, "enqueue_on", None)
        if enqueue_on is None:
            raise ConfigurationError(f"{self.store!r} cannot enqueue on a caller's connection")
        from mtls_hooks.queue._sqlite import SQLiteQueueStore

        module = type(connection).__module__.split(".")[0]
        expected = "sqlite3" if isinstance(self.store, SQLiteQueueStore) else "psycopg"
        if module != expected:
            raise ConfigurationError(
                f"connection must be a {expected} connection to {self.store.url.split(':')[0]}"
            )
        cursor = connection.cursor()
        try:
            job_id, _ = enqueue_on(cursor, job)
        finally:
            cursor.close()
        return str(job_id)

    def _status(self, name: str) -> EndpointStatus:
        target = self.store.get_target(name)
        if target is None:
            names = [t.name for t in self.store.targets()]
            raise UnknownEndpointError(f"unknown endpoint {name!r}{did_you_mean(name, names)}")
        return EndpointStatus(
            Endpoint.from_config(name, target.config),
            target.enabled,
            target.disabled_reason,
            target.failing_since,
        )

    def _endpoints(self) -> list[EndpointStatus]:
        return [
            EndpointStatus(
                Endpoint.from_config(t.name, t.config),
                t.enabled,
                t.disabled_reason,
                t.failing_since,
            )
            for t in self.store.targets()
        ]

    def _set_enabled(self, name: str, enabled: bool, reason: str | None) -> None:
        if not self.store.set_enabled(name, enabled, reason=reason):
            self._status(name)  # raises UnknownEndpointError with a suggestion

    def _check_target(self, name: str) -> None:
        self._status(name)  # raises UnknownEndpointError with a suggestion


class Outbox(_OutboxBase):
    """Durable webhooks from blocking code; see the module docstring.

    Example::

        outbox = Outbox("sqlite:///var/lib/app/outbox.sqlite3")
        message_id = outbox.enqueue("billing", {"invoice": "in_1"}, event_type="invoice.paid")
    """

    def __init__(self, store: QueueStore | str, *, clock: Callable[[], float] = time.time) -> None:
        """Use ``store``: a :class:`~mtls_hooks.queue.QueueStore` or a store URL.

        Raises:
            ConfigurationError: a malformed store URL.
            StoreUnavailableError: the database cannot be opened or reached.
        """
        super().__init__(store, clock=clock)

    def enqueue(
        self,
        endpoint: str | Endpoint,
        payload: object,
        *,
        event_type: str | None = None,
        idempotency_key: str | None = None,
        connection: Any = None,
    ) -> str:
        """Commit one webhook for ``endpoint``; return its message id (its ``webhook-id``).

        Args:
            endpoint: the endpoint's name (or record).
            payload: a JSON-serialisable value, or bytes sent verbatim.
            event_type: wrap the payload as ``{"type", "timestamp", "data"}``.
            idempotency_key: a second enqueue with this key returns the first message's id.
            connection: the caller's psycopg (PostgreSQL) or sqlite3 (SQLite) connection:
                the message then commits or rolls back with the caller's transaction.

        Raises:
            UnknownEndpointError: no endpoint has this name.
            ConfigurationError: a payload that is not JSON-serialisable.
            StoreUnavailableError: the database cannot be reached; nothing was written.
        """
        job = self._job(endpoint, payload, event_type, idempotency_key)
        if connection is not None:
            return self._enqueue_on(connection, job)
        return self.store.enqueue(job)[0]

    def add_endpoint(self, endpoint: Endpoint, *, enabled: bool = True) -> None:
        """Create or replace an endpoint record (its enabled state is kept on replace)."""
        self.store.put_target(endpoint.name, endpoint.to_config(), enabled=enabled)
        self._known.pop(endpoint.name, None)

    def endpoint(self, name: str) -> EndpointStatus:
        """Return the endpoint and its state.

        Raises:
            UnknownEndpointError: no endpoint has this name.
        """
        return self._status(name)

    def endpoints(self) -> list[EndpointStatus]:
        """Every endpoint, by name."""
        return self._endpoints()

    def disable(self, name: str, *, reason: str = "disabled by an operator") -> None:
        """Stop delivering to ``name``; its messages wait until :meth:`enable`.

        Raises:
            UnknownEndpointError: no endpoint has this name.
        """
        self._set_enabled(name, False, reason)

    def enable(self, name: str) -> None:
        """Resume delivering to ``name`` (and reset its circuit breaker).

        Raises:
            UnknownEndpointError: no endpoint has this name.
        """
        self._set_enabled(name, True, None)

    def status(self) -> QueueStats:
        """Counts by state and endpoint, and the age of the oldest due message."""
        return self.store.stats(QUEUE)

    def messages(
        self, *, state: JobState | None = None, endpoint: str | None = None, limit: int = 100
    ) -> list[Job]:
        """List messages, oldest first (``state=JobState.FAILED``: the dead letter)."""
        return self.store.jobs(QUEUE, state=state, target=endpoint, limit=limit)

    def show(self, message_id: str) -> tuple[Job, list[AttemptRecord]]:
        """Return a message and its attempt history.

        Raises:
            ConfigurationError: no such message.
        """
        return self._show(message_id)

    def retry(
        self,
        message_ids: Sequence[str] = (),
        *,
        endpoint: str | None = None,
        all_failed: bool = False,
    ) -> int:
        """Replay dead-lettered messages: these ids, an endpoint's, or all; return how many.

        Raises:
            ConfigurationError: not exactly one of the three choices.
            UnknownEndpointError: no endpoint has this name.
        """
        return self._retry(message_ids, endpoint, all_failed)

    def purge(self, *, older_than_s: float) -> int:
        """Delete delivered and dead-lettered messages older than ``older_than_s``."""
        return self.store.purge(QUEUE, older_than_s=older_than_s)

    def close(self) -> None:
        """Close the store if this outbox opened it from a URL."""
        self._close_store()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncOutbox(_OutboxBase):
    """:class:`Outbox` for asyncio: the same methods, awaited; store calls run on a thread."""

    def __init__(self, store: QueueStore | str, *, clock: Callable[[], float] = time.time) -> None:
        """Use ``store``: a :class:`~mtls_hooks.queue.QueueStore` or a store URL.

        Raises:
            ConfigurationError: a malformed store URL.
            StoreUnavailableError: the database cannot be opened or reached.
        """
        super().__init__(store, clock=clock)

    async def enqueue(
        self,
        endpoint: str | Endpoint,
        payload: object,
        *,
        event_type: str | None = None,
        idempotency_key: str | None = None,
        connection: Any = None,
    ) -> str:
        """Commit one webhook; see :meth:`Outbox.enqueue`. ``connection`` is a psycopg
        ``AsyncConnection``: the insert runs on it, in the caller's transaction.

        Raises:
            UnknownEndpointError: no endpoint has this name.
            ConfigurationError: a payload that is not JSON-serialisable.
            StoreUnavailableError: the database cannot be reached; nothing was written.
        """
        job = await asyncio.to_thread(self._job, endpoint, payload, event_type, idempotency_key)
        if connection is None:
            job_id, _ = await asyncio.to_thread(self.store.enqueue, job)
            return job_id
        aenqueue_on = getattr(self.store, "aenqueue_on", None)
        if aenqueue_on is None:
            raise ConfigurationError(f"{self.store!r} cannot enqueue on an async connection")
        job_id, _ = await aenqueue_on(connection, job)
        return str(job_id)

    async def add_endpoint(self, endpoint: Endpoint, *, enabled: bool = True) -> None:
        """See :meth:`Outbox.add_endpoint`."""
        config = endpoint.to_config()
        await asyncio.to_thread(self.store.put_target, endpoint.name, config, enabled=enabled)
        self._known.pop(endpoint.name, None)

    async def endpoint(self, name: str) -> EndpointStatus:
        """See :meth:`Outbox.endpoint`."""
        return await asyncio.to_thread(self._status, name)

    async def endpoints(self) -> list[EndpointStatus]:
        """See :meth:`Outbox.endpoints`."""
        return await asyncio.to_thread(self._endpoints)

    async def disable(self, name: str, *, reason: str = "disabled by an operator") -> None:
        """See :meth:`Outbox.disable`."""
        await asyncio.to_thread(self._set_enabled, name, False, reason)

    async def enable(self, name: str) -> None:
        """See :meth:`Outbox.enable`."""
        await asyncio.to_thread(self._set_enabled, name, True, None)

    async def status(self) -> QueueStats:
        """See :meth:`Outbox.status`."""
        return await asyncio.to_thread(self.store.stats, QUEUE)

    async def messages(
        self, *, state: JobState | None = None, endpoint: str | None = None, limit: int = 100
    ) -> list[Job]:
        """See :meth:`Outbox.messages`."""
        return await asyncio.to_thread(
            self.store.jobs, QUEUE, state=state, target=endpoint, limit=limit
        )

    async def show(self, message_id: str) -> tuple[Job, list[AttemptRecord]]:
        """See :meth:`Outbox.show`."""
        return await asyncio.to_thread(self._show, message_id)

    async def retry(
        self,
        message_ids: Sequence[str] = (),
        *,
        endpoint: str | None = None,
        all_failed: bool = False,
    ) -> int:
        """See :meth:`Outbox.retry`."""
        return await asyncio.to_thread(self._retry, message_ids, endpoint, all_failed)

    async def purge(self, *, older_than_s: float) -> int:
        """See :meth:`Outbox.purge`."""
        return await asyncio.to_thread(self.store.purge, QUEUE, older_than_s=older_than_s)

    async def aclose(self) -> None:
        """Close the store if this outbox opened it from a URL."""
        await asyncio.to_thread(self._close_store)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
