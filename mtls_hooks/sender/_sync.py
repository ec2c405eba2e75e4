"""The synchronous twin: :class:`WebhookSender`, over one pooled keep-alive ``httpx.Client``.

Its connections go through :class:`~mtls_hooks.sender._deadline.DeadlineBackend`, so the try's
budget (attempt timeout and deadline) bounds every blocking step, not each read alone.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterable
from typing import Self

import httpx
import tenacity

from mtls_hooks.core._errors import DeliveryError
from mtls_hooks.sender._base import WebhookMessage, _Delivery, _SenderBase
from mtls_hooks.sender._deadline import DeadlineBackend, deadline_transport
from mtls_hooks.sender._results import DeliveryResult
from mtls_hooks.sender._retry import AttemptFailed

__all__ = ["WebhookSender"]


class WebhookSender(_SenderBase):
    """Sends webhooks synchronously over one pooled, keep-alive ``httpx.Client``.

    Thread-safe. Use it as a context manager, or call :meth:`close`. The constructor
    (keyword-only, shared with :class:`AsyncWebhookSender`) is documented on
    ``_SenderBase.__init__``: TLS material, pins, signing keys, retry policy, pool size,
    HTTP/2, and the injectable clocks and sleep.
    """

    def _open(self) -> None:
        options = self._httpx_options()
        # httpx bounds each read, not a try: the backend caps every blocking step by the time
        # the try has left (see _deadline), so status line and headers count too.
        backend = DeadlineBackend(self._monotonic)
        self._try_end = backend.try_end
        self._attempt_timeout_s = self.retry.attempt_timeout_s
        transport = deadline_transport(
            backend,
            ssl_context=options.pop("verify"),
            http2=options.pop("http2"),
            limits=options.pop("limits"),
        )
        self._client = httpx.Client(
            **options,
            transport=transport,
        )

    def send(
        self,
        url: str,
        payload: object,
        *,
        event_type: str | None = None,
        webhook_id: str | None = None,
    ) -> DeliveryResult:
        """Deliver one webhook, retrying per the policy.

        Args:
            url: the receiver's ``https://`` endpoint.
            payload: JSON-serialisable data, or ``bytes`` sent verbatim.
            event_type: wraps ``payload`` in the Standard Webhooks envelope
                ``{"type", "timestamp", "data"}``.
            webhook_id: the idempotency key; a fresh ``msg_...`` when ``None``.

        Returns:
            The result, with every attempt, when the receiver answered 2xx.

        Raises:
            TLSError: the receiver's certificate is not trusted or not pinned, or it
                refused ours. Never retried.
            EndpointGoneError: the receiver answered 410.
            StatusError: a 3xx or a 4xx/5xx that is not retried.
            RetriesExhaustedError: retryable failures until the attempt limit or deadline.
            ConfigurationError: a bad URL, payload or webhook id.
        """
        delivery = self._start(url, payload, event_type, webhook_id)
        try:
            self._attempt(delivery)
        except AttemptFailed as first:
            # Only a failed first try pays for tenacity; it is replayed there as attempt 1
            # so the policy sees every try (see _SenderBase._replaying).
            retrying = tenacity.Retrying(
                sleep=self._sleep or time.sleep, **self._retrying_kwargs(delivery)
            )
            try:
                retrying(self._replaying(first, self._attempt), delivery)
            except AttemptFailed as failure:
                raise self._final_error(delivery, failure) from failure.__cause__
        return self._result(delivery)

    def _attempt(self, delivery: _Delivery) -> None:
        headers = self._sign(delivery)
        timeout, up_at = self._budget(delivery)
        started = up_at - timeout  # the reading _budget took
        self._try_end.up_at = up_at  # this thread's try, for every blocking step
        kept = bytearray()
        try:
            # Streamed: only the start of the body is kept (see _SenderBase._keep). Closing
            # a half-read response makes httpcore close its connection instead of pooling it.
            with self._client.stream(
                "POST",
                delivery.url,
                content=delivery.body,
                headers=headers,
                # The pool wait; the backend caps the other steps. The client's own timeout
                # object when it is the same: building one per request costs more than a µs.
                timeout=httpx.USE_CLIENT_DEFAULT if timeout == self._attempt_timeout_s else timeout,
            ) as response:
                for chunk in response.iter_raw():
                    if self._keep(kept, chunk, up_at):  # the whole answer: see _budget
                        break
        except (httpx.HTTPError, OSError, httpx.InvalidURL, ValueError) as exc:
            raise self._failed(delivery, exc, self._monotonic() - started) from exc
        latency = self._monotonic() - started
        self._answer(delivery, response.status_code, response.headers, bytes(kept), latency)

    def send_many(
        self, messages: Iterable[WebhookMessage], *, concurrency: int | None = None
    ) -> list[DeliveryResult]:
        """Deliver many webhooks on up to ``concurrency`` threads (default: ``max_connections``).

        Returns:
            One result per message, in order; a failed one carries its error in ``.error``.

        Raises:
            ConfigurationError: a bad URL, payload or webhook id in any message.
        """

        def one(message: WebhookMessage) -> DeliveryResult:
            try:
                return self.send(message.url, message.payload, event_type=message.event_type,
                                 webhook_id=message.webhook_id)  # fmt: skip
            except DeliveryError as exc:
                if not isinstance(exc.result, DeliveryResult):  # pragma: no cover
                    raise  # _final_error always records a DeliveryResult
                return exc.result

        workers = concurrency or self.max_connections
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="webhook") as pool:
            return list(pool.map(one, messages))

    def close(self) -> None:
        """Close every pooled connection; the sender cannot be used afterwards."""
        self._closed = True
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
