"""The asynchronous twin: :class:`AsyncWebhookSender`, over one aiohttp ``ClientSession``.

aiohttp rather than ``httpx.AsyncClient``: with 32-64 requests in flight httpcore 1.0.9's pool
rescans and polls every connection per request and delivers a fraction of aiohttp's rate
(encode/httpx#3215, open; the proposed fixes encode/httpcore#924 and #929 were closed unmerged,
#928 and #1035 are open). ``bench/bench_sender.py`` measures both on every run. HTTP/2 needs
httpx (aiohttp speaks only HTTP/1.1), so ``http2=True`` uses it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Self

import aiohttp
import httpx
import tenacity
from aiohttp.connector import NEEDS_CLEANUP_CLOSED

from mtls_hooks.core._errors import ConfigurationError, DeliveryError
from mtls_hooks.sender._base import WebhookMessage, _Delivery, _SenderBase
from mtls_hooks.sender._outcomes import ANSWER_KEEP_BYTES
from mtls_hooks.sender._results import DeliveryResult
from mtls_hooks.sender._retry import AttemptFailed

__all__ = ["AsyncWebhookSender"]

# Before CPython 3.12.8/3.13.1 asyncio leaks an SSL transport whose peer never answers
# close_notify (a receiver stalled past our timeout; fixed by python/cpython#118960): aiohttp
# then aborts it itself. Its own flag says which versions need it; on the others it warns.
_LEAKS_CLOSED_SSL: bool = NEEDS_CLEANUP_CLOSED


def _async_sleep(sleep: Callable[[float], Any] | None) -> Callable[[float], Awaitable[None]]:
    if sleep is None:
        return asyncio.sleep

    async def wrapped(seconds: float) -> None:
        waited = sleep(seconds)
        if inspect.isawaitable(waited):
            await waited

    return wrapped


class AsyncWebhookSender(_SenderBase):
    """Sends webhooks from asyncio over one pooled keep-alive connection set.

    Same constructor and method names as :class:`WebhookSender`. Use ``async with``, or
    await :meth:`aclose`, within one event loop (aiohttp binds its session to the loop of
    the first delivery).
    """

    def _open(self) -> None:
        self._async_sleep = _async_sleep(self._sleep)
        self._session: aiohttp.ClientSession | None = None
        self._httpx: httpx.AsyncClient | None = None
        self._default_timeout = aiohttp.ClientTimeout(total=self.retry.attempt_timeout_s)
        if self.http2:
            self._httpx = httpx.AsyncClient(**self._httpx_options())

    def _aiohttp(self) -> aiohttp.ClientSession:
        # Created on first use: aiohttp binds a session to the running event loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    ssl=self._ssl_context,
                    limit=self.max_connections,
                    enable_cleanup_closed=_LEAKS_CLOSED_SSL,
                ),
                cookie_jar=aiohttp.DummyCookieJar(),  # no receiver's cookie follows us
                auto_decompress=False,  # a capped body must not inflate: see _SenderBase
                timeout=self._default_timeout,
                headers=self._headers,  # per request only the signature's: see _sign
            )
        return self._session

    async def send(
        self,
        url: str,
        payload: object,
        *,
        event_type: str | None = None,
        webhook_id: str | None = None,
    ) -> DeliveryResult:
        """Deliver one webhook, retrying per the policy; see :meth:`WebhookSender.send`.

        Returns:
            The result, with every attempt, when the receiver answered 2xx.

        Raises:
            TLSError: the receiver's certificate is not trusted or not pinned, or it
                refused ours. Never retried.
            EndpointGoneError: the receiver answered 410.
            StatusError: a 3xx or a 4xx/5xx that is not retried.
            RetriesExhaustedError: retryable failures until the attempt limit or deadline.
            ConfigurationError: a bad URL, payload or webhook id, or a closed sender.
        """
        delivery = self._start(url, payload, event_type, webhook_id)
        try:
            await self._attempt(delivery)
        except AttemptFailed as first:
            retrying = tenacity.AsyncRetrying(
                sleep=self._async_sleep, **self._retrying_kwargs(delivery)
            )
            replay = self._replaying(first, self._attempt)

            async def again(delivery: _Delivery) -> None:
                await replay(delivery)  # a coroutine function, for tenacity to await

            try:
                await retrying(again, delivery)
            except AttemptFailed as failure:
                raise self._final_error(delivery, failure) from failure.__cause__
        return self._result(delivery)

    async def _attempt(self, delivery: _Delivery) -> None:
        headers = self._sign(delivery)
        timeout, up_at = self._budget(delivery)
        started = up_at - timeout  # the reading _budget took
        status: int
        answer_headers: Mapping[str, str]
        body: bytes
        try:
            if self._httpx is not None:
                # httpx's timeouts bound each read, so headers trickled a byte per read would
                # stretch the try: asyncio's timeout bounds all of it, as aiohttp's total does.
                async with (
                    asyncio.timeout(timeout),
                    self._httpx.stream(
                        "POST",
                        delivery.url,
                        content=delivery.body,
                        headers=headers,
                        timeout=timeout,
                    ) as response,
                ):
                    kept = bytearray()  # only the start of the body: see _SenderBase._keep
                    async for chunk in response.aiter_raw():
                        if self._keep(kept, chunk, up_at):
                            break
                status, answer_headers, body = response.status_code, response.headers, bytes(kept)
            else:
                client_timeout = (
                    self._default_timeout
                    if timeout == self._default_timeout.total
                    else aiohttp.ClientTimeout(total=timeout)
                )
                async with (self._session or self._aiohttp()).post(
                    delivery.url,
                    data=delivery.body,
                    headers=headers,
                    allow_redirects=False,  # Standard Webhooks: a 3xx is a failure
                    timeout=client_timeout,
                ) as answer:
                    status, answer_headers = answer.status, answer.headers
                    content = answer.content
                    if content.is_eof():
                        # The usual short answer arrived with its headers: take it as it is
                        # (aiohttp's flow control bounds what it buffers) without the chunk
                        # loop, which costs ~10 us per delivery.
                        body = content.read_nowait()[:ANSWER_KEEP_BYTES]
                    else:
                        kept = bytearray()
                        try:
                            async for chunk in content.iter_any():
                                if self._keep(kept, chunk, up_at):
                                    break
                        finally:
                            if not content.is_eof():
                                answer.close()  # drop the rest with the connection, undrained
                        body = bytes(kept)
        except (httpx.HTTPError, aiohttp.ClientError, OSError, httpx.InvalidURL, ValueError) as exc:
            raise self._failed(delivery, exc, self._monotonic() - started) from exc
        latency = self._monotonic() - started
        self._answer(delivery, status, answer_headers, body, latency)

    async def send_many(
        self, messages: Iterable[WebhookMessage], *, concurrency: int | None = None
    ) -> list[DeliveryResult]:
        """Deliver many webhooks with at most ``concurrency`` in flight.

        Returns:
            One result per message, in order; a failed one carries its error in ``.error``.

        Raises:
            ConfigurationError: a bad URL, payload or webhook id in any message.
        """
        queue = list(messages)
        results: list[DeliveryResult | None] = [None] * len(queue)
        pending = iter(enumerate(queue))

        async def worker() -> None:
            # Workers pull from one iterator: no task or semaphore per message.
            for index, message in pending:
                try:
                    results[index] = await self.send(
                        message.url,
                        message.payload,
                        event_type=message.event_type,
                        webhook_id=message.webhook_id,
                    )
                except DeliveryError as exc:
                    # _final_error always records a DeliveryResult.
                    results[index] = exc.result if isinstance(exc.result, DeliveryResult) else None

        workers = min(concurrency or self.max_connections, max(1, len(queue)))
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(workers):
                    group.create_task(worker())
        except* ConfigurationError as group_error:
            # The other workers were cancelled; surface the error as send() would, unwrapped.
            raise group_error.exceptions[0] from None
        return [r for r in results if r is not None]

    async def aclose(self) -> None:
        """Close every pooled connection; the sender cannot be used afterwards."""
        self._closed = True
        if self._session is not None:
            await self._session.close()
        if self._httpx is not None:
            await self._httpx.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
