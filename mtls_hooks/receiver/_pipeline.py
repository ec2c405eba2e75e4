"""The request path of one webhook endpoint: checks in a deliberate order, then dispatch.

Order, cheapest and least revealing first; the body is not read before the size check, nor
parsed before the signature verified::

    method 405 → peer identity 403 → source IP 403 → rate limit 429 → HTTP Basic 401
    → content type 415 → size 413 (Content-Length, then while reading)
    → signature + timestamp 401 → JSON + event type 400
    → dedupe (duplicate 204, in flight 503) → handler
                          └─ inbox mode: store the event (202; a known id: 202 duplicate)

The rate limit (``rate_limit``, a token bucket per client SPKI pin) comes right after the
identity checks: an identity the endpoint refuses spends nothing, and one over its limit costs
no body read, signature or store write. A store that cannot be reached, for the limit or the
dedupe claim, is 503 with ``Retry-After``: never a 2xx for an event that was not recorded.

The signature stage first reads the three webhook headers from the scope, each at most once:
a repeated ``webhook-id``, ``webhook-timestamp`` or ``webhook-signature`` is 401
``malformed-header``, the Verifier's reason for two different values, whatever the values.

Each stage returns either a value for the next one or a :class:`Refusal`, which
:class:`DecisionLog` renders as the problem response while writing the request's single
decision line. A fault of the receiver's own past the checks is a logged problem 500 too.

A refusal sent before the body was read is safe over HTTP/2 as well: the client may go on
sending that stream's body (RFC 9113 §8.1), and the serving layer discards it without
touching the connection's other streams (``mtls_hooks.serving._serving._Streams``). So no
stage reads a body it is about to refuse, on either protocol.

Cost: everything is bound when the endpoint is compiled (keys, policy, networks, credential
bytes, Quart names), unconfigured checks are skipped, identity verdicts are cached per
certificate and the body is parsed once. Measured in-process against a bare Quart view that
reads the body and answers 204, the whole pipeline with the in-memory store adds about 57 µs
on a loaded 2-core machine where that bare view costs 263 µs (about 37 µs scaled to the
reference figures in DESIGN.md, 10 % of bare Quart + Hypercorn over mTLS). Most of it is the
signature check and ``json.loads``; the SQLite store adds about 45 µs more. The handler's own
task (so that a sender hanging up cannot cancel it) costs two event-loop iterations on handled
requests only: a median of 11 µs (2-21 µs over seven runs) on that machine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final, cast

from mtls_hooks.core._errors import ConfigurationError, SignatureError, TimestampError
from mtls_hooks.core._events import AsyncHandler, HandlerTable, WebhookEvent, find_handler
from mtls_hooks.core._identity import PeerIdentity, peer_from_scope
from mtls_hooks.core._signing import VerifiedMessage
from mtls_hooks.receiver._asgi import lean_empty, lean_make_response
from mtls_hooks.receiver._decisions import DecisionLog, Refusal, logger
from mtls_hooks.receiver._endpoint import EndpointSettings
from mtls_hooks.stores._ratelimit import Rate, RateLimiter, retry_after_header
from mtls_hooks.stores._replay import ClaimState, DedupeStore

if TYPE_CHECKING:
    from quart import Response

    from mtls_hooks.inbox._inbox import Inbox

__all__ = ["AsyncHandler", "DecisionLog", "Refusal", "WebhookView", "drain_handlers", "logger"]


class WebhookView:
    """The request path of one endpoint; everything it reads is bound at creation.

    Register the bound :meth:`handle` as the view: Quart awaits it directly (a callable
    instance would not be recognised as async and would be pushed to a thread).
    """

    __slots__ = (
        "_accepted_text",
        "_handlers",
        "_inbox",
        "_limiter",
        "_quart",
        "_store",
        "_tasks",
        "_too_large_error",
        "ep",
    )

    def __init__(
        self,
        ep: EndpointSettings,
        store: DedupeStore,
        handlers: HandlerTable,
        tasks: set[asyncio.Task[None]],
        limiter: RateLimiter | None = None,
        *,
        inbox: Inbox | None = None,
    ) -> None:
        import quart
        from werkzeug.exceptions import RequestEntityTooLarge

        self.ep = ep
        self._store = store
        # The live registry, so handlers registered after init_app are seen without a rebuild.
        self._handlers = handlers
        # The running handler tasks of the app, awaited by drain_handlers at shutdown.
        self._tasks = tasks
        # Consulted only when the endpoint has a rate_limit: None costs nothing per request.
        self._limiter = limiter if ep.rate_limit is not None else None
        # Where an endpoint in inbox mode stores its events; None for a direct one.
        self._inbox = inbox if ep.mode == "inbox" else None
        self._accepted_text = ", ".join(sorted(ep.content_types))
        # Bound once: an import statement in the request path costs a lookup every time.
        self._quart = quart
        self._too_large_error = RequestEntityTooLarge

    async def handle(self) -> Response:
        """Handle one request: the view function (Quart calls it in the request context)."""
        return await self.process(cast(Any, self._quart.request)._get_current_object())

    async def process(self, req: Any) -> Response:
        """Run the stages on ``req``: Quart's request, or the lean path's adapter (``_asgi``).

        The adapter has what the stages read (method, headers, content length, scope, the
        body) and ``wait_for_answer``, which also watches for the sender hanging up.
        """
        started = time.perf_counter()
        ep = self.ep
        try:
            peer = peer_from_scope(req.scope)
        except ConfigurationError:
            peer = None  # an unreadable certificate counts as none: refused if one is required
        log = DecisionLog(ep.name, peer, started, req.method)
        try:
            refusal = self._gate(req, peer)
            if refusal is None and self._limiter is not None:
                refusal = await self._limit(req, peer)
            if refusal is None:
                refusal = self._gate_request(req)
            if refusal is not None:
                return _close_if_unread(req, log.refused(refusal))
            body = await self._read(req)
            if isinstance(body, Refusal):
                return _close_if_unread(req, log.refused(body))
            headers = _webhook_headers(req.scope["headers"])
            if isinstance(headers, Refusal):
                return log.refused(headers)
            try:
                message = ep.verifier.verify(headers, body)
            except (SignatureError, TimestampError) as exc:
                log.event_id = headers.get(_ID_HEADER)  # unverified: the logger quotes it
                return log.refused(Refusal(401, exc.reason, str(exc)))
            log.event_id = message.webhook_id
            parsed = self._parse(body)
            if isinstance(parsed, Refusal):
                return log.refused(parsed)
            payload, event_type = parsed
            log.event_type = event_type
            return await self._dispatch(
                log, message, event_type=event_type, payload=payload, body=body, peer=peer, req=req
            )
        except Exception as exc:
            # Anything unforeseen past the checks: a problem+json 500 with its decision line
            # and traceback, never Quart's bare 500 page without one. (Cancellation is not
            # an Exception: the serving layer logs the 500 hypercorn sends for that.)
            return log.failed(exc, internal=True)

    def _gate(self, req: Any, peer: PeerIdentity | None) -> Refusal | None:
        """Run every check that needs no body; unconfigured checks cost nothing."""
        ep = self.ep
        if req.method != "POST":
            return _NOT_POST
        if ep.require_peer or ep.policy is not None:
            identity_refusal = ep.identity_refusal(peer)
            if identity_refusal is not None:
                return Refusal(403, *identity_refusal)
        if ep.networks:
            client = req.scope.get("client")
            if not ep.address_allowed(client):
                address = client[0] if client else "unknown"
                return Refusal(
                    403,
                    "ip-not-allowed",
                    f"source address {address} is not allowed on this endpoint",
                )
        return None

    async def _limit(self, req: Any, peer: PeerIdentity | None) -> Refusal | None:
        """Take a token from the client identity's bucket: 429 when it is empty."""
        ep = self.ep
        rate = cast("Rate", ep.rate_limit)
        if peer is not None:
            who = peer.spki_pin
        else:  # an endpoint without require_peer: the source address stands in
            client = req.scope.get("client")
            who = f"ip:{client[0] if client else 'unknown'}"
        key = f"{ep.name} {who}" if ep.rate_limit_per_endpoint else who
        try:
            wait_s = await cast("RateLimiter", self._limiter).acquire(key, rate)
        except Exception:
            logger.exception("rate-limit store failed on endpoint %s", ep.name)
            return _STORE_DOWN
        if not wait_s:
            return None
        return Refusal(
            429,
            "rate-limited",
            f"this client may send {rate.count} webhooks per {rate.period_s:g} s here; "
            f"retry in {wait_s:.1f} s",
            {"Retry-After": retry_after_header(wait_s)},
        )

    def _gate_request(self, req: Any) -> Refusal | None:
        """The checks of the request itself that need no body: credentials, type, size."""
        ep = self.ep
        headers = req.headers
        if ep.basic_auth is not None and not ep.basic_auth_ok(headers.get("authorization")):
            return _BAD_BASIC
        content_type = headers.get("content-type")
        media_type = content_type.partition(";")[0].strip().lower() if content_type else ""
        if media_type not in ep.content_types:
            return Refusal(
                415,
                "content-type",
                f"content type {media_type or 'missing'!r} is not accepted here "
                f"(accepted: {self._accepted_text})",
            )
        length = req.content_length
        if length is not None and length > ep.max_body_bytes:
            return _too_large(length, ep.max_body_bytes)
        return None

    async def _read(self, req: Any) -> bytes | Refusal:
        """Read the body within the deadline and the size cap."""
        ep = self.ep
        length = req.content_length  # a cached property: parsed once, in _gate
        try:
            try:
                if length is not None and _arrived(req.body):
                    # The usual small webhook is fully buffered before the view runs: awaiting
                    # it cannot suspend, so no deadline is armed (a timer costs ~4-8 µs).
                    return cast(bytes, await req.body)
                async with asyncio.timeout(ep.body_timeout_s):
                    return await _read_body(req.body, length, ep.max_body_bytes)
            except self._too_large_error as exc:  # Quart's own MAX_CONTENT_LENGTH
                raise _TooLargeError(length or ep.max_body_bytes + 1) from exc
        except _TooLargeError as exc:
            return _too_large(exc.size, ep.max_body_bytes)
        except TimeoutError:
            return Refusal(
                408, "body-timeout", f"the body did not arrive within {ep.body_timeout_s:g} s"
            )

    def _parse(self, body: bytes) -> tuple[Any, str] | Refusal:
        """Parse the JSON body once and extract the event type."""
        try:
            payload = json.loads(body)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
            return _NOT_JSON
        except RecursionError:
            # json's C scanner recurses once per nesting level: a signed body of deeply
            # nested arrays exhausts the stack. Refused like any other unparsable body.
            return _TOO_DEEP
        try:
            event_type = self.ep.event_type(payload)
        except Exception:
            logger.exception("event_type extractor of endpoint %s failed", self.ep.name)
            event_type = None
        if not isinstance(event_type, str) or not event_type:
            return _NO_TYPE
        return payload, event_type

    async def _dispatch(
        self,
        log: DecisionLog,
        message: VerifiedMessage,
        *,
        event_type: str,
        payload: Any,
        body: bytes,
        peer: PeerIdentity | None,
        req: Any,
    ) -> Response:
        """Claim the id, run the handler once, and settle the claim by the outcome; in inbox
        mode, store the event instead and answer 202."""
        response_class = self._quart.Response
        name = self.ep.name
        webhook_id = message.webhook_id
        if self._inbox is not None:
            event = WebhookEvent(
                webhook_id, event_type, message.timestamp, payload, body, peer, name
            )
            try:
                created = await self._inbox.accept(event)
            except Exception:
                logger.exception("inbox failed to store webhook %s", webhook_id)
                return log.refused(_INBOX_DOWN, level=logging.ERROR)
            if created:
                return log.done(self._empty(202), "queued")
            # Already stored (handled or not): the sender may stop retrying.
            return log.done(response_class(b"", 202, {"Webhook-Duplicate": "true"}), "duplicate")
        store = self._store
        key = f"{name} {webhook_id}"  # ids never contain spaces, so this key is unambiguous
        try:
            claim = await store.claim(key)
        except Exception:
            logger.exception("dedupe store failed to claim webhook %s", webhook_id)
            return log.refused(_STORE_DOWN, level=logging.ERROR)
        if claim is ClaimState.DONE:
            return log.done(response_class(b"", 204, {"Webhook-Duplicate": "true"}), "duplicate")
        if claim is ClaimState.IN_FLIGHT:
            detail = f"webhook {webhook_id} is being processed by another request; retry later"
            return log.refused(_IN_FLIGHT._replace(detail=detail))
        handler = find_handler(self._handlers, name, event_type)
        if handler is None:
            await _settle(store, key, success=True)
            return log.done(response_class(b"", 204), "unhandled")
        event = WebhookEvent(webhook_id, event_type, message.timestamp, payload, body, peer, name)
        # The handler runs in a task of its own, which answers through a future. A sender
        # whose timeout is shorter than the handler disconnects, and Quart then cancels the
        # view: that cancels only the future this view waits on. The handler (a sync one's
        # thread cannot be stopped anyway) keeps running and keeps its claim, so the sender's
        # retries are answered "in flight" until the task settles the claim, instead of
        # claiming the id again and running the handler beside it. (asyncio.shield would do
        # the same with a third event-loop iteration per request.)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Response] = loop.create_future()
        task = loop.create_task(self._run(handler, event, key, log, answer))
        tasks = self._tasks
        tasks.add(task)  # a strong reference: the loop holds tasks only weakly
        task.add_done_callback(tasks.discard)
        # Quart cancels this view when the sender hangs up; on the lean path the adapter
        # watches for that itself.
        wait_for_answer = getattr(req, "wait_for_answer", None)
        return await (answer if wait_for_answer is None else wait_for_answer(answer))

    async def _run(
        self,
        handler: AsyncHandler,
        event: WebhookEvent,
        key: str,
        log: DecisionLog,
        answer: asyncio.Future[Response],
    ) -> None:
        """Run the handler, settle its claim by the outcome, and set the view's ``answer``.

        Runs as a task that outlives a cancelled view; the decision line is written here, so
        a handler whose sender has gone is logged all the same.
        """
        store = self._store
        try:
            try:
                result = await handler(event)
                response = self._empty(204) if result is None else await self._make_response(result)
            except Exception as exc:
                await _settle(store, key, success=False)
                response = log.failed(exc)
            else:
                success = 200 <= response.status_code < 300
                await _settle(store, key, success=success)
                outcome = "handled" if success else "handler-refused"
                response = log.done(response, outcome)
        except Exception as exc:  # a fault past the handler (settling, logging): Quart's 500
            if answer.done():
                raise
            answer.set_exception(exc)
            return
        except BaseException:
            # Cancelled (only by drain_handlers at shutdown, or by the loop's teardown): the
            # claim is left to its lease, as when the process dies mid-handler, since a sync
            # handler's thread may still be running and a released id would let a retry run
            # beside it. A view still waiting unwinds with the task.
            answer.cancel()
            raise
        if not answer.done():  # done means cancelled with the view: the sender has gone
            answer.set_result(response)

    def _empty(self, status: int) -> Response:
        """An empty answer (a handler's 204, a stored event's 202); shared on the lean path."""
        quart = self._quart
        if quart.has_app_context():  # the Quart path: after-request functions may change it
            return cast("Response", quart.Response(b"", status))
        return cast("Response", lean_empty(status))

    async def _make_response(self, result: Any) -> Response:
        """Quart's ``make_response``, in the app context the handler inherited, if any.

        A handler started on the Quart path inherits the request's app context; one started
        on the lean path has none, and ``lean_make_response`` enters one for this call.
        """
        quart = self._quart
        if quart.has_app_context():
            return cast("Response", await quart.current_app.make_response(result))
        return cast("Response", await lean_make_response(result))


async def drain_handlers(tasks: set[asyncio.Task[None]], timeout_s: float) -> None:
    """Let running handlers finish at shutdown, then cancel those that outlast ``timeout_s``.

    Args:
        tasks: the handler tasks of one app, as :class:`WebhookView` records them.
        timeout_s: how long they may take in all, and again how long cancelled ones may take
            to unwind (so shutdown is bounded even by a handler that ignores cancellation).
    """
    if not tasks:
        return
    _, pending = await asyncio.wait(set(tasks), timeout=timeout_s)
    if pending:
        logger.warning(
            "cancelling %d webhook handler(s) still running %g s after shutdown began; "
            "their ids stay claimed until the dedupe lease ends, then a retry runs them",
            len(pending),
            timeout_s,
        )
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=timeout_s)


async def _settle(store: DedupeStore, key: str, *, success: bool) -> None:
    """Complete or release a claim; a store failure here must not turn a success into a 5xx."""
    try:
        if success:
            await store.complete(key)
        else:
            await store.release(key)
    except Exception:
        logger.exception("dedupe store failed to %s %s", "complete" if success else "release", key)


def _close_if_unread(req: Any, response: Response) -> Response:
    """Say ``Connection: close`` on an HTTP/1.x refusal sent before the body was read.

    Hypercorn closes such a connection once the answer is out (h11 cannot start the next
    request while the body is unread), but without saying so; a pooling client would then
    send its next request into a closing socket. RFC 9112 §9.6: announce the close.
    HTTP/2 streams are reset individually and forbid connection headers.
    """
    if req.http_version.startswith("1") and not _arrived(req.body):
        response.headers["Connection"] = "close"
    return response


def _arrived(body: Any) -> bool:
    """True when Quart's request body is complete (``quart.wrappers.request.Body``).

    Reads a private attribute, pinned by the quart range in pyproject; when it is missing
    the answer is False and the caller arms the deadline as usual.
    """
    complete = getattr(body, "_complete", None)
    return isinstance(complete, asyncio.Event) and complete.is_set()


class _TooLargeError(Exception):
    def __init__(self, size: int) -> None:
        self.size = size


async def _read_body(body: Any, length: int | None, max_body_bytes: int) -> bytes:
    """Read a Quart request body, never holding more than ``max_body_bytes`` (plus one chunk).

    Raises:
        _TooLargeError: the body exceeded the cap.
    """
    if length is not None:
        # The server enforces Content-Length framing (h11/h2 refuse a longer body) and the
        # length was checked against the cap: one await, no per-chunk work.
        return cast(bytes, await body)
    # Chunked (HTTP/1.1) or unannounced (HTTP/2): count while streaming.
    chunks: list[bytes] = []
    size = 0
    async for chunk in body:
        size += len(chunk)
        if size > max_body_bytes:
            raise _TooLargeError(size)
        chunks.append(chunk)
    return b"".join(chunks)


def _webhook_headers(raw_headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str] | Refusal:
    """Read the three Standard Webhooks headers from the ASGI scope, each at most once.

    A repeated one is refused as the Verifier refuses two different values (401
    ``malformed-header``), and so is a repetition of one value: RFC 9110 §5.3 forbids
    repeating a field that is not a list, and a proxy may join the lines with a comma. Taking
    one of them, as a ``Headers.get`` would, lets a middlebox or a client choose the value
    that is verified. One pass over the raw pairs (names lower-cased: ASGI only says they
    should be) costs less than the three lookups in Quart's headers it replaces.
    """
    found: dict[str, str] = {}
    for raw_name, raw_value in raw_headers:
        name = _WEBHOOK_HEADERS.get(raw_name.lower())
        if name is None:
            continue
        if name in found:
            return Refusal(
                401,
                "malformed-header",
                f"the {name} header appears more than once; send each webhook header once",
            )
        found[name] = raw_value.decode("latin-1")  # ASGI header values are latin-1 bytes
    return found


def _too_large(size: int, max_body_bytes: int) -> Refusal:
    return Refusal(
        413,
        "too-large",
        f"the body is {size} bytes or more; this endpoint accepts at most {max_body_bytes} bytes",
    )


_ID_HEADER: Final = "webhook-id"
_WEBHOOK_HEADERS: Final = {
    name.encode(): name for name in (_ID_HEADER, "webhook-timestamp", "webhook-signature")
}
_NOT_POST: Final = Refusal(
    405, "method-not-allowed", "webhooks are delivered with POST", {"Allow": "POST"}
)
# RFC 7617 §2: name the scheme and the charset the credentials are read in.
_BAD_BASIC: Final = Refusal(
    401,
    "basic-auth",
    "HTTP Basic credentials missing or wrong",
    {"WWW-Authenticate": 'Basic realm="webhooks", charset="UTF-8"'},
)
_NOT_JSON: Final = Refusal(400, "malformed-json", "the body is not valid UTF-8 JSON")
_TOO_DEEP: Final = Refusal(400, "malformed-json", "the JSON body is nested too deeply")
_NO_TYPE: Final = Refusal(
    400, "missing-type", "the payload has no event type (a non-empty string 'type' member)"
)
# 503, not 409: Standard Webhooks senders (ours included) retry only 429/502/503/504 among
# statuses, and treat a 409 as final; if the first run then failed and released the id, no
# retry would come and the event would be lost. Retry-After: the first delivery is usually
# done within seconds; the sender comes back then.
_IN_FLIGHT: Final = Refusal(503, "in-flight", "", {"Retry-After": "5"})
_INBOX_DOWN: Final = Refusal(
    503, "store-unavailable", "the inbox is unavailable; retry later", {"Retry-After": "30"}
)
_STORE_DOWN: Final = Refusal(
    503, "store-unavailable", "the dedupe store is unavailable; retry later", {"Retry-After": "30"}
)
