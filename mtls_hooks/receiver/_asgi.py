"""The lean path: webhook requests answered on ASGI ``receive``/``send``, without Quart's request
machinery.

:class:`LeanWebhooks` wraps ``app.asgi_app`` (Quart's middleware seam). A POST to the path
of a webhook endpoint is handed to that endpoint's :class:`~mtls_hooks.receiver._pipeline.
WebhookView` directly, through :class:`LeanRequest`, a small adapter with what the pipeline's
stages read (method, headers, content length, scope, a streamed body under the caps); the
same stages run in the same order with the same refusals and decision line, and the answer
is sent on ``send``. Everything else goes to Quart untouched: other routes and methods, an
app whose request hooks or signal receivers must see every request, rule paths with
converters, an ``app.asgi_app`` that another middleware wrapped first, and endpoints with
``quart_request=True``. Quart's request machinery
(a Request and its Headers built per request, two tasks and an ``asyncio.wait`` per request,
the request and app contexts, ``full_dispatch_request``) costs about half of a served
webhook; the stages themselves cost little.

What a handler sees is unchanged: its :class:`~mtls_hooks.core._events.WebhookEvent`,
the peer (``event.peer``, and :func:`~mtls_hooks.receiver._authz.current_peer`, which reads
the scope this module keeps in a context variable), a Quart response when it returns a value
(made in an app context, entered for that case only), a worker thread for a sync handler.
There is no Quart request context: a handler that reads ``quart.request`` or ``session``
needs the endpoint option ``quart_request=True``, which serves that endpoint through Quart.

A sender hanging up: Quart cancels its view at once, wherever it is. The lean path notices
while it reads the body (nothing is answered or logged, as there) and while it waits for a
handler slower than ``_WATCH_AFTER_S`` (the view ends; the handler's task runs on and logs,
as there). Between the two, the checks and the dedupe claim of a complete request run to
their end, and its handler starts: the same as a sender that hangs up during its handler.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final, Protocol

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.sansio.utils import get_content_length

if TYPE_CHECKING:
    from quart import Quart

__all__ = [
    "ClientDisconnected",
    "LeanRequest",
    "LeanWebhooks",
    "lean_empty",
    "lean_make_response",
    "lean_scope",
    "mount_lean_path",
]

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]


class LeanView(Protocol):
    """What the lean path needs of an endpoint's view (``WebhookView`` is one)."""

    async def process(self, req: Any) -> Any:
        """Run the pipeline on ``req``; return a Quart response."""


# The app and scope of the webhook request being handled on the lean path. A handler task is
# created inside the request, so it inherits them (asyncio copies the context into each task,
# and Quart's run_sync into the worker thread of a sync handler).
_LEAN: ContextVar[tuple[Quart, Scope] | None] = ContextVar("mtls_hooks_lean", default=None)


def lean_scope() -> Scope | None:
    """The ASGI scope of the lean-path webhook request in progress here, if any."""
    current = _LEAN.get()
    return None if current is None else current[1]


async def lean_make_response(result: Any) -> Any:
    """Turn a handler's return value into a Quart response, as Quart's view dispatch would.

    On the Quart path a handler runs inside the app context; on the lean path there is none,
    so one is entered for this call only (``make_response`` reads ``current_app``).

    Raises:
        RuntimeError: called outside a webhook request.
    """
    current = _LEAN.get()
    if current is None:
        raise RuntimeError("lean_make_response() outside a webhook request")
    app = current[0]
    async with app.app_context():
        return await app.make_response(result)


# Empty answers shared by every request, by status: the response and its encoded head.
_SHARED: dict[int, tuple[Any, tuple[tuple[bytes, bytes], ...]]] = {}


def lean_empty(status: int) -> Any:
    """An empty answer on the lean path (a handler's 204, the inbox's 202): one shared Quart
    response per status.

    Building a Quart response costs about 12 µs, a sixth of a lean request; the lean path only
    reads it (status, headers, body), so one built once serves every request, its head
    encoded for ASGI once too. (On the Quart path each request gets its own: after-request
    functions may change it.)
    """
    shared = _SHARED.get(status)
    if shared is None:
        from quart import Response

        response = Response(b"", status)
        shared = _SHARED[status] = (response, tuple(_encode_headers(response.headers)))
    return shared[0]


class ClientDisconnected(BaseException):
    """The sender hung up: Quart would cancel the view here; nothing is answered.

    A ``BaseException``, as cancellation is, so that the pipeline's ``except Exception``
    (which turns faults into a logged 500) lets it through.
    """


class LeanHeaders:
    """The request headers, read from the scope on demand; names case-insensitive.

    ``get`` returns the first value, as werkzeug's ``Headers.get``; ``getlist`` returns them
    all, repeated lines kept in order.
    """

    __slots__ = ("_first", "_raw")

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        self._raw = raw
        self._first: dict[bytes, bytes] | None = None

    def get(self, name: str, default: str | None = None) -> str | None:
        """Return the first value of ``name``, or ``default``."""
        first = self._first
        if first is None:
            # One pass on first use; ASGI says names "should" be lower-cased: lower them anyway.
            first = {}
            for raw_name, raw_value in self._raw:
                first.setdefault(raw_name.lower(), raw_value)
            self._first = first
        found = first.get(name.lower().encode("latin-1"))
        return default if found is None else found.decode("latin-1")

    def getlist(self, name: str) -> list[str]:
        """Return every value of ``name``, in the order received."""
        key = name.lower().encode("latin-1")
        return [value.decode("latin-1") for raw_name, value in self._raw if raw_name.lower() == key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for raw_name, value in self._raw:
            yield raw_name.decode("latin-1").title(), value.decode("latin-1")

    def items(self) -> list[tuple[str, str]]:
        """Every ``(Name, value)`` pair, names title-cased as werkzeug's ``Headers``."""
        return list(self)


_WATCH_AFTER_S: Final = 0.05
# Shared, never waited on: what _pipeline._arrived reads (an asyncio.Event's is_set()).
_ARRIVED: Final = asyncio.Event()
_ARRIVED.set()
_PENDING: Final = asyncio.Event()


class LeanBody:
    """The request body, read from ``receive``: awaited whole or iterated in chunks.

    Behaves as Quart's ``Body`` where the pipeline looks: ``_complete`` says whether the whole
    body has arrived (messages already queued by Hypercorn are taken without waiting, as
    Quart's receiving task would have), and a body over the app's ``MAX_CONTENT_LENGTH``
    raises werkzeug's ``RequestEntityTooLarge``. ``http.disconnect`` raises
    :class:`ClientDisconnected`.
    """

    __slots__ = ("_chunks", "_done", "_max_bytes", "_queue", "_receive", "_refused", "_size")

    def __init__(
        self, receive: Receive, max_content_length: int | None, content_length: int | None
    ) -> None:
        self._receive = receive
        # Hypercorn's receive is its per-request asyncio.Queue's get: what is queued already
        # can be taken without a wait (get_nowait). Any other receive is only awaited.
        queue = getattr(receive, "__self__", None)
        self._queue = queue if isinstance(queue, asyncio.Queue) else None
        self._chunks: list[bytes] = []
        self._size = 0
        self._done = False
        self._max_bytes = max_content_length
        # As Quart's Body: an announced length over the cap is refused at the first read.
        self._refused = (
            content_length is not None
            and max_content_length is not None
            and content_length > max_content_length
        )

    @property
    def _complete(self) -> asyncio.Event:
        if self._refused:
            return _PENDING
        self._take_queued()
        return _ARRIVED if self._done else _PENDING

    def _take_queued(self) -> None:
        queue = self._queue
        while queue is not None and not self._done:
            try:
                message = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            self._take(message)

    def _take(self, message: Mapping[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                self._chunks.append(chunk)
                self._size += len(chunk)
                if self._max_bytes is not None and self._size > self._max_bytes:
                    # As Quart's Body: refused now and at every later read; nothing more is
                    # taken from receive.
                    self._refused = self._done = True
                    raise RequestEntityTooLarge()
            if not message.get("more_body", False):
                self._done = True
        elif kind == "http.disconnect":
            raise ClientDisconnected()

    async def _read_all(self) -> bytes:
        if self._refused:
            raise RequestEntityTooLarge()
        self._take_queued()
        while not self._done:
            self._take(await self._receive())
        chunks = self._chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def __await__(self) -> Any:
        return self._read_all().__await__()

    def __aiter__(self) -> LeanBody:
        return self

    async def __anext__(self) -> bytes:
        """Everything that arrived since the last chunk, as Quart's ``Body`` iterates."""
        if self._refused:
            raise RequestEntityTooLarge()
        self._take_queued()
        while not self._chunks:
            if self._done:
                raise StopAsyncIteration
            self._take(await self._receive())
            self._take_queued()
        chunks, self._chunks = self._chunks, []
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def wait_disconnect(self) -> None:
        """Return when the sender hangs up (nothing but ``http.disconnect`` follows a body)."""
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                return


class LeanRequest:
    """What the pipeline's stages read of a request, straight from the ASGI scope.

    Attributes:
        scope: the ASGI scope (with the ``tls`` extension the server put in it).
        method: the request method.
        http_version: ``"1.1"``, ``"2"``...
        headers: :class:`LeanHeaders`.
        content_length: the ``Content-Length``, parsed as werkzeug parses it (``None`` when
            absent or for a chunked body).
        body: :class:`LeanBody`.
    """

    __slots__ = ("body", "content_length", "headers", "http_version", "method", "scope")

    def __init__(self, scope: Scope, receive: Receive, max_content_length: int | None) -> None:
        self.scope = scope
        self.method: str = scope["method"]
        self.http_version: str = scope["http_version"]
        headers = LeanHeaders(scope["headers"])
        self.headers = headers
        self.content_length = get_content_length(
            headers.get("content-length"), headers.get("transfer-encoding")
        )
        self.body = LeanBody(receive, max_content_length, self.content_length)

    async def wait_for_answer(self, answer: asyncio.Future[Any]) -> Any:
        """Wait for the handler's answer, or for the sender to hang up.

        Quart cancels the view when ``http.disconnect`` arrives; so does this: the answer
        future is cancelled (the handler's task, which owns its claim, runs on) and
        :class:`ClientDisconnected` is raised. The usual handler answers within a few
        event-loop iterations, so the task that watches ``receive`` starts only for an answer
        still missing after :data:`_WATCH_AFTER_S` to twice that (:class:`_SlowAnswers`: a
        task and ``asyncio.wait`` cost ~15 µs, a timer per request ~5 µs with its heap
        operations; a dict entry costs next to nothing).
        """
        loop = asyncio.get_running_loop()
        watchers: list[asyncio.Task[None]] = []
        hung_up: list[bool] = []

        async def watch() -> None:
            await self.body.wait_disconnect()
            if not answer.done():
                hung_up.append(True)
                answer.cancel()

        def start_watching() -> None:
            watchers.append(loop.create_task(watch()))

        slow = _slow_answers(loop)
        slow.add(self, start_watching)
        try:
            return await answer
        except asyncio.CancelledError:
            task = asyncio.current_task()
            ours = task is not None and task.cancelling() > 0
            if hung_up and not ours:
                raise ClientDisconnected() from None
            raise
        finally:
            slow.discard(self)
            for watcher in watchers:
                watcher.cancel()


class _SlowAnswers:
    """One event loop's requests waiting for their handler, checked every ``_WATCH_AFTER_S``.

    Two generations: a request added since the last check is young; at the next check it
    turns old, and at the one after, if it is still waiting, its hang-up watch starts (so
    between one and two periods after it began). Checks run only while requests wait.
    """

    __slots__ = ("_handle", "_old", "_young")

    def __init__(self) -> None:
        # No reference to the loop: it is this object's key in _SLOW_ANSWERS.
        self._young: dict[object, Callable[[], None]] = {}
        self._old: dict[object, Callable[[], None]] = {}
        self._handle: asyncio.TimerHandle | None = None

    def add(self, key: object, start_watching: Callable[[], None]) -> None:
        """``key`` waits from now; ``start_watching`` when it has waited long enough."""
        self._young[key] = start_watching
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(_WATCH_AFTER_S, self._check)

    def discard(self, key: object) -> None:
        """``key`` has its answer (or was cancelled): nothing to watch."""
        if self._young.pop(key, None) is None:
            self._old.pop(key, None)

    def _check(self) -> None:
        due, self._old, self._young = self._old, self._young, {}
        for start_watching in due.values():
            start_watching()
        self._handle = None
        if self._old:
            self._handle = asyncio.get_running_loop().call_later(_WATCH_AFTER_S, self._check)


_SLOW_ANSWERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _SlowAnswers] = (
    weakref.WeakKeyDictionary()
)


def _slow_answers(loop: asyncio.AbstractEventLoop) -> _SlowAnswers:
    found = _SLOW_ANSWERS.get(loop)
    if found is None:
        found = _SLOW_ANSWERS[loop] = _SlowAnswers()
    return found


def mount_lean_path(app: Quart) -> LeanWebhooks | None:
    """Wrap ``app.asgi_app`` in :class:`LeanWebhooks` (once); return it.

    Returns ``None``, and leaves every request on Quart, when ``app.asgi_app`` is already
    another middleware: the lean path, outside it, would let webhooks bypass it. Middleware
    mounted after the receiver wraps the lean path and sees every request.
    """
    current = app.asgi_app
    if isinstance(current, LeanWebhooks):
        return current
    if getattr(current, "__func__", None) is not getattr(type(app), "asgi_app", None):
        return None
    lean = LeanWebhooks(app, current)
    setattr(app, "asgi_app", lean)  # noqa: B010 - mypy refuses assigning to a method
    return lean


class LeanWebhooks:
    """ASGI middleware on ``app.asgi_app``: webhook POSTs on the lean path, the rest to Quart.

    Attributes:
        views: the lean-served views by exact request path.
    """

    __slots__ = ("_app", "_next", "_signals", "views")

    def __init__(self, app: Quart, next_app: Callable[..., Awaitable[None]]) -> None:
        from quart.signals import request_finished, request_started

        self._app = app
        self._next = next_app
        self._signals = (request_started, request_finished)
        self.views: dict[str, LeanView] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            view = self.views.get(scope["path"])
            if view is not None and not self._has_request_hooks():
                await self._serve(view, scope, receive, send)
                return
        await self._next(scope, receive, send)

    def _has_request_hooks(self) -> bool:
        """True when request hooks or signal receivers must see every request: Quart's path.

        Checked per request (a few dict lookups), since hooks may be added after
        ``init_app``. Only app-wide hooks (key ``None``) apply: webhook routes belong to no
        blueprint.
        """
        app = self._app
        started, finished = self._signals
        return bool(
            app.before_request_funcs.get(None)
            or app.after_request_funcs.get(None)
            or app.teardown_request_funcs.get(None)
            or app.url_value_preprocessors.get(None)
            or started.receivers
            or finished.receivers
        )

    async def _serve(self, view: LeanView, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._app
        token = _LEAN.set((app, scope))
        try:
            req = LeanRequest(scope, receive, app.config["MAX_CONTENT_LENGTH"])
            response = await view.process(req)
        except ClientDisconnected:
            return  # as Quart's cancelled view: the sender is gone, nothing to answer
        finally:
            _LEAN.reset(token)
        shared = _SHARED.get(response.status_code)
        if shared is not None and response is shared[0]:
            # A shared empty answer (read only): its head was encoded once, with it.
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": list(shared[1]),
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        # A bytes body (every answer of the pipeline) is read without get_data()'s iteration.
        data = getattr(response.response, "data", None)
        body = data if isinstance(data, bytes) else await response.get_data()
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": _encode_headers(response.headers),
            }
        )
        await send({"type": "http.response.body", "body": body})


def _encode_headers(headers: Any) -> list[tuple[bytes, bytes]]:
    # As quart.utils.encode_headers, which Quart's ASGI connection sends.
    return [(key.lower().encode(), value.encode()) for key, value in headers.items()]
