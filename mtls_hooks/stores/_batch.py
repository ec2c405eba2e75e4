"""Coalesce concurrent store calls into one statement: the round trip is paid per batch.

A network store's cost per call is mostly fixed: the driver's work to send a statement and
read its answer, the pool check-out, the event-loop wake-ups. Requests that arrive while a
statement is on its way are queued, and go together in the next statement, at most
``max_batch`` at a time and ``max_flights`` statements at once. At low load each call is
alone in its batch and waits one event-loop turn more; under load the per-call cost falls
with the batch size (measured in ``bench/bench_dedupe.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["Batcher"]

_T = TypeVar("_T")
_R = TypeVar("_R")


class Batcher(Generic[_T, _R]):
    """Runs ``run(items)`` for the items submitted meanwhile; each caller gets its own result.

    ``run`` returns one result per item, in order; if it raises, every caller of that batch
    gets the exception. A caller cancelled while its item was on its way never sees the
    result: ``orphaned(item, result)`` gets it instead (to undo a claim nobody will settle).
    """

    __slots__ = (
        "_flights",
        "_orphaned",
        "_pending",
        "_run",
        "_scheduled",
        "_tasks",
        "max_batch",
        "max_flights",
    )

    def __init__(
        self,
        run: Callable[[Sequence[_T]], Awaitable[Sequence[_R]]],
        *,
        orphaned: Callable[[_T, _R], None] | None = None,
        max_batch: int = 64,
        max_flights: int = 4,
    ) -> None:
        self._run = run
        self._orphaned = orphaned
        self.max_batch = max_batch
        self.max_flights = max_flights
        self._pending: list[tuple[_T, asyncio.Future[_R]]] = []
        self._flights = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: _T) -> _R:
        """Queue ``item`` for the next batch and return its result.

        Raises:
            Exception: whatever ``run`` raised for the batch.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_R] = loop.create_future()
        self._pending.append((item, future))
        self._schedule(loop)
        return await future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._scheduled and self._flights < self.max_flights:
            self._scheduled = True
            # Next turn, not now: the callers woken in this turn join the same batch.
            loop.call_soon(self._start, loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        batch = self._pending[: self.max_batch]
        del self._pending[: self.max_batch]
        if not batch:
            return
        self._flights += 1
        task = loop.create_task(self._flush(batch, loop))
        self._tasks.add(task)  # a strong reference: the loop keeps tasks only weakly
        task.add_done_callback(self._tasks.discard)
        if self._pending:
            self._schedule(loop)

    async def _flush(
        self, batch: list[tuple[_T, asyncio.Future[_R]]], loop: asyncio.AbstractEventLoop
    ) -> None:
        try:
            results = await self._run([item for item, _ in batch])
        except BaseException as exc:
            for _, future in batch:
                if future.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for (item, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
                elif self._orphaned is not None:  # its caller was cancelled meanwhile
                    self._orphaned(item, result)
        finally:
            self._flights -= 1
            if self._pending:
                self._schedule(loop)

    async def aclose(self) -> None:
        """Wait for the statements on their way (their callers are waiting for them)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
