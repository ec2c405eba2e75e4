"""The half of the webhook senders that does no I/O, shared by both twins.

:class:`WebhookSender` (``_sender_sync``, httpx) and :class:`AsyncWebhookSender`
(``_sender_async``, aiohttp; httpx when ``http2=True``) derive from :class:`_SenderBase`. It
builds the TLS context once, serialises the payload once, signs each attempt with a fresh
timestamp and the same ``webhook-id``, classifies answers and failures, records attempts and
turns the last failure into one of our errors (the one translation boundary). The twins only
send bytes and loop with tenacity.
"""

from __future__ import annotations

import datetime as dt
import http.cookiejar
import json
import math
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import httpx
import tenacity
from tenacity.stop import stop_base

from mtls_hooks.core._errors import (
    ConfigurationError,
    DeliveryError,
    EndpointGoneError,
    RetriesExhaustedError,
    StatusError,
    TLSError,
    TransportError,
)
from mtls_hooks.core._policy import PeerPolicy
from mtls_hooks.core._signing import Signer, SigningKey, parse_key
from mtls_hooks.core._tls import PathLike, create_client_context
from mtls_hooks.sender._outcomes import ANSWER_KEEP_BYTES, classify_exception, classify_status
from mtls_hooks.sender._results import Attempt, DeliveryResult, redact_url
from mtls_hooks.sender._retry import AttemptFailed, RetryPolicy, stop_before_deadline
from mtls_hooks.sender._urls import url_problem

__all__ = ["WebhookMessage"]

_R = TypeVar("_R")

_USER_AGENT = "mtls-hooks/0.1"


class WebhookMessage(NamedTuple):
    """One delivery for ``send_many``; the fields mean what ``send``'s arguments mean.

    A named tuple, like the results: a fan-out builds thousands of them.
    """

    url: str
    payload: object
    event_type: str | None = None
    webhook_id: str | None = None

    def __repr__(self) -> str:
        return (
            f"WebhookMessage(url={redact_url(self.url)!r}, payload={self.payload!r}, "
            f"event_type={self.event_type!r}, webhook_id={self.webhook_id!r})"
        )


class _NoCookies(http.cookiejar.CookieJar):
    """A jar that keeps no cookie and sends none: a receiver's cookies must not follow us.

    Its policy refuses every domain; its two entry points also return at once, which skips
    what the jar does per request: httpx hands it the answer's headers as a new
    ``email.message.Message`` and both calls take the jar's lock.
    """

    def __init__(self) -> None:
        super().__init__(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))

    def add_cookie_header(self, request: urllib.request.Request) -> None:
        return

    def extract_cookies(self, response: Any, request: urllib.request.Request) -> None:
        return


class _RecordingStop(stop_base):
    """Remembers whether the stop ended the retries, rather than the retry predicate.

    tenacity asks the stop only about failures the predicate wants retried, so a failure
    after a fired stop is "retries exhausted", and any other one was never meant to retry.
    """

    def __init__(self, inner: stop_base) -> None:
        self.inner = inner
        self.fired = False

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        self.fired = bool(self.inner(retry_state))
        return self.fired


@dataclass(slots=True)
class _Delivery:
    url: str = field(repr=False)  # may hold a password
    body: bytes
    webhook_id: str
    deadline_at: float | None  # a reading of the sender's monotonic clock
    deadline_stop: stop_before_deadline | None = None  # made only when a retry is needed
    stop: _RecordingStop | None = None
    attempts: list[Attempt] = field(default_factory=list)


class _SenderBase:
    """The shared, I/O-free half of both senders; see the module docstring."""

    def __init__(
        self,
        *,
        signing_keys: SigningKey | str | Sequence[SigningKey | str],
        ca_file: PathLike | None = None,
        certfile: PathLike | None = None,
        keyfile: PathLike | None = None,
        key_password: bytes | str | None = None,
        pkcs12_file: PathLike | None = None,
        ssl_context: ssl.SSLContext | None = None,
        pins: Iterable[str] = (),
        retry: RetryPolicy | None = None,
        max_connections: int = 32,
        http2: bool = False,
        headers: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] | None = None,
    ) -> None:
        """Build the TLS context and the signer once, for every delivery of this sender.

        Args:
            signing_keys: one key or several during a rotation: ``HmacSecret`` /
                ``Ed25519SigningKey`` objects or their ``whsec_`` / ``whsk_`` text.
            ca_file: PEM bundle trusted for receivers; ``None`` uses the system store.
            certfile: client certificate chain (PEM), with ``keyfile``.
            keyfile: client private key (PEM, optionally encrypted).
            key_password: passphrase of ``keyfile`` or ``pkcs12_file``.
            pkcs12_file: client key and certificate as PKCS#12, instead of PEM files.
            ssl_context: a ready context, instead of every TLS argument above.
            pins: receiver SPKI pins (``sha256/...``) or certificate fingerprints, checked
                inside the handshake: an unpinned receiver never sees one request byte.
            retry: the retry policy; :meth:`RetryPolicy.default` when ``None``.
            max_connections: pool size, and the default concurrency of ``send_many``.
            http2: offer HTTP/2 (needs the ``h2`` package; the async twin then uses httpx).
            headers: extra headers for every request.
            clock: wall clock in epoch seconds, for signature timestamps and HTTP-dates.
            monotonic: clock of the total deadline, of each try's budget and of the
                latency recorded per attempt.
            sleep: how to wait between tries; the sync twin calls it, the async twin awaits
                it if it returns an awaitable. Tests inject one so they never sleep.

        Raises:
            ConfigurationError: unreadable certificate files, a wrong passphrase, a bad key
                or pin, pins given with a foreign ``ssl_context``, ``max_connections < 1``.
        """
        keys = [signing_keys] if isinstance(signing_keys, str | bytes) else signing_keys
        if not isinstance(keys, Sequence):
            keys = [keys]
        parsed = [parse_key(k) if isinstance(k, str) else k for k in keys]
        self._signer = Signer(parsed, clock=clock)  # type: ignore[arg-type]  # Signer checks
        pins = list(pins)
        if ssl_context is None:
            password = key_password.encode() if isinstance(key_password, str) else key_password
            ssl_context = create_client_context(
                ca_file=ca_file,
                certfile=certfile,
                keyfile=keyfile,
                key_password=password,
                pkcs12_file=pkcs12_file,
                server_policy=PeerPolicy.from_rules(pins=pins) if pins else None,
                alpn_protocols=("h2", "http/1.1") if http2 else ("http/1.1",),
            )
        elif pins:
            raise ConfigurationError(
                "pins need the context this sender builds: drop ssl_context, or build it "
                "with mtls_hooks create_client_context(server_policy=...)"
            )
        if max_connections < 1:
            raise ConfigurationError("max_connections must be at least 1")
        self._ssl_context = ssl_context
        self._trust = getattr(ssl_context, "description", "the configured CA")
        self._pin_count = len(pins)
        self.retry = retry or RetryPolicy.default()
        self.max_connections = max_connections
        self.http2 = http2
        self._headers = {
            "content-type": "application/json",
            "user-agent": _USER_AGENT,
            # Only the first ANSWER_KEEP_BYTES of an answer are kept: a compressed one could
            # inflate far past that in one chunk (a zip bomb), so none is asked for, and
            # neither twin decompresses one sent anyway.
            "accept-encoding": "identity",
            **{k.lower(): v for k, v in (headers or {}).items()},
        }
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._closed = False
        self._open()

    def _open(self) -> None:
        """Create the twin's HTTP client; called once, at the end of ``__init__``."""
        raise NotImplementedError

    def _httpx_options(self) -> dict[str, Any]:
        """The ``httpx.Client`` / ``httpx.AsyncClient`` settings both twins share."""
        return {
            "verify": self._ssl_context,  # built once here; httpx 0.28 deprecates cert=
            "http2": self.http2,
            "follow_redirects": False,  # Standard Webhooks: a 3xx is a failure
            "trust_env": False,  # no proxy or CA from the environment behind the caller's back
            "cookies": _NoCookies(),
            "timeout": self.retry.attempt_timeout_s,
            # The constant headers live on the client, set once: httpx merges a request's
            # headers into them, and each one given per request that is also a client
            # default (user-agent, accept-encoding) costs a scan and a delete.
            "headers": self._headers,
            "limits": httpx.Limits(
                max_connections=self.max_connections,
                max_keepalive_connections=self.max_connections,
            ),
        }

    def __repr__(self) -> str:
        # Never the keys: only what an operator needs to tell senders apart.
        return (
            f"{type(self).__name__}(trust={self._trust!r}, pins={self._pin_count}, "
            f"http2={self.http2}, max_connections={self.max_connections})"
        )

    # -- one delivery ------------------------------------------------------------------

    def _start(
        self, url: str, payload: object, event_type: str | None, webhook_id: str | None
    ) -> _Delivery:
        if self._closed:
            raise ConfigurationError(f"{type(self).__name__} is closed")
        problem = url_problem(url)
        if problem is not None:
            raise ConfigurationError(problem)
        if isinstance(payload, (bytes, bytearray, memoryview)):  # a tuple: ~3x a union's speed
            if event_type is not None:
                raise ConfigurationError("event_type wraps a payload; bytes are sent verbatim")
            body = bytes(payload)
        else:
            if event_type is not None:
                # The Standard Webhooks payload envelope: {"type", "timestamp", "data"}.
                when = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
                stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
                payload = {"type": event_type, "timestamp": stamp, "data": payload}
            try:
                body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
            except (TypeError, ValueError) as exc:
                raise ConfigurationError(f"payload is not JSON-serialisable: {exc}") from exc
        deadline_s = self.retry.deadline_s
        deadline_at = None if deadline_s is None else self._monotonic() + deadline_s
        return _Delivery(url, body, webhook_id or Signer.new_webhook_id(), deadline_at)

    def _sign(self, delivery: _Delivery) -> dict[str, str]:
        """The three signature headers of one try; the constant ones are the client's.

        A fresh timestamp (and so a fresh signature) per attempt keeps retries inside the
        receiver's tolerance; the same id lets it dedupe them. Each twin's HTTP client holds
        ``_headers`` as its defaults, and a request's headers replace defaults of the same
        name, so a caller's ``headers`` never replace a signature header.
        """
        signed = self._signer.sign(
            delivery.body, webhook_id=delivery.webhook_id, timestamp=math.floor(self._clock())
        )
        return signed.as_dict()

    def _budget(self, delivery: _Delivery) -> tuple[float, float]:
        """Time one try may take: ``(seconds, monotonic reading at which it is up)``.

        The attempt timeout, capped by what is left of the total deadline; ``reading -
        seconds`` is the try's start. The reading bounds the whole try, so a receiver
        trickling its answer a byte per read cannot stretch it: the async twin's timeouts
        cover it all, the sync twin's network backend (``_deadline``) caps each blocking step
        of httpx by the time left, and both check it between the chunks of the body
        (:meth:`_keep`).
        """
        now = self._monotonic()
        timeout = self.retry.attempt_timeout_s
        deadline_at = delivery.deadline_at
        if deadline_at is not None and deadline_at - now < timeout:
            timeout = max(0.001, deadline_at - now)
        return timeout, now + timeout

    def _timeout_s(self, delivery: _Delivery) -> float:
        # The seconds alone; bench/bench_sender.py times this step of the layer by this name.
        return self._budget(delivery)[0]

    def _retrying_kwargs(self, delivery: _Delivery) -> dict[str, Any]:
        stop = self.retry.stop
        if delivery.deadline_at is not None:
            delivery.deadline_stop = stop_before_deadline(delivery.deadline_at, self._monotonic)
            stop = stop | delivery.deadline_stop
        delivery.stop = _RecordingStop(stop)
        return {
            "stop": delivery.stop,
            "wait": self.retry.wait,
            "retry": self.retry.retry,
            "before_sleep": lambda state: self._record_wait(delivery, state),
            "reraise": True,
        }

    @staticmethod
    def _replaying(
        first: AttemptFailed, attempt: Callable[[_Delivery], _R]
    ) -> Callable[[_Delivery], _R]:
        """Wrap ``attempt`` so tenacity's attempt 1 re-raises ``first`` without I/O.

        Both twins make the first try outside tenacity: a delivery answered 2xx at once (the
        common case) then skips ~40 µs of tenacity's per-call machinery, a fifth of an
        aiohttp request. Replaying the failure keeps attempt numbers, stop and wait exact.
        """
        replayed = False

        def replay_then_attempt(delivery: _Delivery) -> _R:
            nonlocal replayed
            if not replayed:
                replayed = True
                raise first
            return attempt(delivery)

        return replay_then_attempt

    def _record_wait(self, delivery: _Delivery, state: tenacity.RetryCallState) -> None:
        delivery.attempts[-1] = delivery.attempts[-1]._replace(
            wait_s=state.upcoming_sleep, wait_reason=self.retry.wait_reason(state)
        )

    def _keep(self, kept: bytearray, chunk: bytes, up_at: float) -> bool:
        """Add the part of ``chunk`` within ``ANSWER_KEEP_BYTES`` to ``kept``.

        Args:
            kept: the start of the answer's body so far.
            chunk: the bytes that just arrived.
            up_at: when the try's time is up, a reading of the monotonic clock.

        Returns:
            True once ``kept`` is full: the twin stops reading and closes the connection,
            rather than drain a huge body or return a half-read one to the pool.

        Raises:
            TimeoutError: the chunk came after the try's time was up. An HTTP library's
                timeouts bound each read, not the answer, which could then trickle in a
                byte per read forever; classified as aiohttp's total timeout is, retryable.
        """
        kept += chunk[: ANSWER_KEEP_BYTES - len(kept)]
        if len(kept) >= ANSWER_KEEP_BYTES:
            return True
        if self._monotonic() >= up_at:
            raise TimeoutError("the answer was still arriving when the try's time was up")
        return False

    def _answer(
        self,
        delivery: _Delivery,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        latency_s: float,
    ) -> None:
        """Record an HTTP answer; raise AttemptFailed unless it is a 2xx."""
        if 200 <= status < 300:
            # classify_status's success, decided without its call and a read of the clock.
            delivery.attempts.append(Attempt(len(delivery.attempts) + 1, status, latency_s))
            return
        failure = classify_status(status, headers, body, url=delivery.url, now=self._clock())
        detail = "" if failure is None else failure.detail
        delivery.attempts.append(
            Attempt(len(delivery.attempts) + 1, status, latency_s, None, detail)
        )
        if failure is not None:
            raise failure

    def _failed(self, delivery: _Delivery, exc: BaseException, latency_s: float) -> AttemptFailed:
        """Classify an httpx, aiohttp, ssl or OS failure of one try, and record it."""
        failure = classify_exception(exc, trust=self._trust)
        delivery.attempts.append(
            Attempt(len(delivery.attempts) + 1, None, latency_s, failure.error, failure.detail)
        )
        return failure

    def _result(self, delivery: _Delivery, error: DeliveryError | None = None) -> DeliveryResult:
        return DeliveryResult(delivery.url, delivery.webhook_id, tuple(delivery.attempts), error)

    def _final_error(
        self, delivery: _Delivery, failure: AttemptFailed
    ) -> DeliveryError | ConfigurationError:
        """Turn the last failed try into one of our errors, with the full result attached.

        A URL the HTTP library refused (``kind == "url"``, never retried) is a
        ``ConfigurationError``, as if ``url_problem`` had caught it: nothing was sent.
        """
        if failure.kind == "url":
            shown = redact_url(delivery.url)
            return ConfigurationError(f"webhook URL {shown!r} cannot be used: {failure}")
        error: DeliveryError
        if delivery.stop is not None and delivery.stop.fired:
            tries = len(delivery.attempts)
            why = (
                f"deadline of {self.retry.deadline_s:g} s"
                if delivery.deadline_stop is not None and delivery.deadline_stop.fired
                else "attempt limit"
            )
            error = RetriesExhaustedError(f"gave up after {tries} attempt(s) ({why}): {failure}")
        elif failure.kind == "tls":
            error = TLSError(str(failure))
        elif failure.kind == "gone":
            error = EndpointGoneError(str(failure), status_code=410)
        elif failure.status_code is not None:
            error = StatusError(str(failure), status_code=failure.status_code)
        else:
            error = TransportError(str(failure))
        error.result = self._result(delivery, error)
        return error
