"""The Quart extension: declares webhook endpoints, reads ``app.config``, registers handlers.

The checks each request passes, and their order, live in :mod:`mtls_hooks.receiver._pipeline`;
the option names and their ``app.config`` keys in :mod:`mtls_hooks.receiver._endpoint`; the
dedupe stores in :mod:`mtls_hooks.stores._replay`.

Acknowledgement: a handler returning ``None`` answers ``204 No Content``; a handler may also
return any Quart response value, and a non-2xx one releases the id so the sender's retry runs
the handler again. An event type with no handler and no fallback is acknowledged with 204 too
(logged as ``unhandled``): refusing it would only make the sender retry it for days. Senders
give up after 15-30 s, so long work belongs after the acknowledgement: an endpoint in inbox
mode (``mode="inbox"``) stores each verified event durably, answers 202 and runs its handlers
from the inbox (:mod:`mtls_hooks.inbox`), in an inbox worker each serving process starts
(``MTLS_HOOKS_INBOX_CONCURRENCY``) or in ``mtls-hooks process-inbox``.

A handler runs to its end even when its sender hangs up first (a timeout shorter than the
handler): it runs in a task of its own, which settles the id's claim when the handler returns,
and meanwhile the sender's retries are answered "in flight". At shutdown, running handlers get
``BACKGROUND_TASK_SHUTDOWN_TIMEOUT`` seconds (Quart's setting, 5 by default) to finish; the
rest are cancelled, and their ids stay claimed until the dedupe lease ends (a sync handler's
thread cannot be stopped), after which a retry runs them again.

Concurrent duplicates: while one request runs the handler of an id, another delivery of the
same id is answered ``503 Service Unavailable`` with ``Retry-After: 5`` (problem reason
``in-flight``) at once, without waiting: a status every Standard Webhooks sender retries, and
by then the id is done (204 duplicate) or released (the handler runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import os
import types
import weakref
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar, Unpack, cast
from urllib.parse import urlsplit

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.core._events import Handler
from mtls_hooks.core._suggest import did_you_mean
from mtls_hooks.inbox._inbox import Inbox
from mtls_hooks.inbox._retry import DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_WAIT_S, InboxRetry
from mtls_hooks.inbox._worker import DEFAULT_HANDLER_TIMEOUT_S, InboxWorker
from mtls_hooks.queue._protocol import DEFAULT_LEASE_S as INBOX_LEASE_S
from mtls_hooks.queue._protocol import StoreUnavailableError
from mtls_hooks.receiver._asgi import LeanWebhooks, mount_lean_path
from mtls_hooks.receiver._endpoint import (
    CONFIG_PREFIX,
    ENDPOINT_DEFAULTS,
    EndpointOptions,
    EndpointSettings,
    check_option_names,
    compile_endpoint,
    merge_options,
)
from mtls_hooks.receiver._pipeline import WebhookView, drain_handlers
from mtls_hooks.serving._config import SERVER_NAMES, env_settings
from mtls_hooks.stores._names import DEFAULT_NAMESPACE
from mtls_hooks.stores._ratelimit import MemoryRateLimiter, RateLimiter
from mtls_hooks.stores._replay import (
    DEFAULT_LEASE_S,
    DEFAULT_MAX_ENTRIES,
    DEFAULT_RETENTION_S,
    DedupeStore,
    SQLiteDedupeStore,
)
from mtls_hooks.stores._url import open_dedupe_store

if TYPE_CHECKING:
    from quart import Quart

__all__ = ["EXTENSION_KEY", "WebhookEndpoint", "WebhookReceiver"]

EXTENSION_KEY: Final = "mtls_hooks"

_RECEIVER_KEYS: Final = {
    "ENDPOINTS": None,
    "DEDUPE_URL": None,
    "DEDUPE_PATH": None,
    "DEDUPE_NAMESPACE": DEFAULT_NAMESPACE,
    "RETENTION_S": DEFAULT_RETENTION_S,
    "LEASE_S": DEFAULT_LEASE_S,
    "DEDUPE_MAX_ENTRIES": DEFAULT_MAX_ENTRIES,
    "INBOX_URL": None,
    "INBOX_CONCURRENCY": 8,
    "INBOX_MAX_ATTEMPTS": DEFAULT_MAX_ATTEMPTS,
    "INBOX_MAX_WAIT_S": DEFAULT_MAX_WAIT_S,
    "INBOX_LEASE_S": INBOX_LEASE_S,
    "INBOX_HANDLER_TIMEOUT_S": DEFAULT_HANDLER_TIMEOUT_S,
}
_ENDPOINT_KEYS: Final = {name.upper(): name for name in ENDPOINT_DEFAULTS}
# The serving core's settings may sit in app.config under the same prefix: known, not ours.
_SERVER_KEYS: Final = frozenset(name.upper() for name in SERVER_NAMES)
_KNOWN_KEYS: Final = tuple(
    CONFIG_PREFIX + key
    for key in dict.fromkeys((*_RECEIVER_KEYS, *_ENDPOINT_KEYS, *sorted(_SERVER_KEYS)))
)
# Read from os.environ beneath app.config. PINS and ALLOW are not: in the environment they
# are the server's handshake rules, and as endpoint defaults they would add to (not narrow)
# an endpoint's own allow list, since a policy admits a peer matching any one rule.
_ENVIRONMENT_KEYS: Final = frozenset((*_RECEIVER_KEYS, *_ENDPOINT_KEYS)) - _SERVER_KEYS
_METHODS: Final = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

F = TypeVar("F", bound=Handler)


@dataclass(slots=True)
class _AppState:
    store: DedupeStore
    owns_store: bool
    limiter: RateLimiter
    # The raw MTLS_HOOKS_* values, passwords and whsec_ secrets included: never in a repr.
    config_endpoints: dict[str, dict[str, Any]] = field(repr=False)
    receiver_config: dict[str, Any] = field(repr=False)
    endpoints: dict[str, EndpointSettings] = field(default_factory=dict)
    # Handlers running on this app (see WebhookView): awaited, then cancelled, at shutdown.
    handler_tasks: set[asyncio.Task[None]] = field(default_factory=set, repr=False)
    # The lean path on app.asgi_app (receiver/_asgi.py), None if another middleware was first.
    lean: LeanWebhooks | None = None
    # Inbox mode: where events are stored, and how this app's own worker runs them.
    inbox: Inbox | None = None
    owns_inbox: bool = False
    inbox_settings: dict[str, Any] = field(default_factory=dict)
    # False once a worker was made with inbox_worker(): the app then starts none of its own.
    inbox_in_app: bool = True
    inbox_worker: InboxWorker | None = field(default=None, repr=False)
    inbox_task: asyncio.Task[Any] | None = field(default=None, repr=False)
    inbox_stopped: asyncio.Event | None = field(default=None, repr=False)


class WebhookEndpoint:
    """A declared webhook endpoint: a path with its own keys, identities and limits.

    Returned by :meth:`WebhookReceiver.endpoint`; register handlers that apply only here with
    :meth:`on` and :meth:`on_any`.
    """

    __slots__ = ("_options", "_receiver", "name", "path")

    def __init__(
        self, receiver: WebhookReceiver, name: str, path: str, options: Mapping[str, Any]
    ) -> None:
        self._receiver = receiver
        self.name = name
        self.path = path
        self._options = dict(options)

    def on(self, event_type: str) -> Callable[[F], F]:
        """Register the handler of ``event_type`` on this endpoint only.

        Raises:
            ConfigurationError: a handler for this type is already registered here.
        """
        return self._receiver.on(event_type, endpoint=self.name)

    def on_any(self, handler: F) -> F:
        """Register the fallback handler of this endpoint (for types without their own).

        Raises:
            ConfigurationError: this endpoint already has a fallback.
        """
        return self._receiver._register(self.name, None, handler)

    def __repr__(self) -> str:
        return f"WebhookEndpoint(name={self.name!r}, path={self.path!r})"


class WebhookReceiver:
    """Verified Standard Webhooks endpoints on a Quart app, the Quart extension way.

    Example::

        hooks = WebhookReceiver(app, path="/webhooks", allow=["uri:spiffe://pay.example/*"])

        @hooks.on("invoice.paid")
        async def paid(event: WebhookEvent) -> None:
            await ledger.record(event.id, event.payload)

    Options given here are the defaults of every endpoint; ``app.config`` keys
    ``MTLS_HOOKS_<OPTION>`` are defaults beneath them (see :class:`EndpointOptions`).
    """

    def __init__(
        self,
        app: Quart | None = None,
        *,
        path: str | None = None,
        name: str = "default",
        store: DedupeStore | None = None,
        rate_limiter: RateLimiter | None = None,
        inbox: Inbox | None = None,
        inbox_retry: InboxRetry | None = None,
        **options: Unpack[EndpointOptions],
    ) -> None:
        """Create the extension, and initialise it on ``app`` when given.

        Args:
            app: the Quart app, or ``None`` to call :meth:`init_app` later.
            path: declare one endpoint at this path (more with :meth:`endpoint`).
            name: the name of that endpoint.
            store: the dedupe store for every app; by default each app gets one from its
                config (``MTLS_HOOKS_DEDUPE_URL``, or ``MTLS_HOOKS_DEDUPE_PATH`` for SQLite,
                else in memory).
            rate_limiter: where the ``rate_limit`` buckets live; by default in the dedupe
                store's PostgreSQL or Redis when it has one, else in process memory.
            inbox: where endpoints in inbox mode store events, for every app; by default
                each app opens ``MTLS_HOOKS_INBOX_URL``.
            inbox_retry: when a handler run from the inbox runs again after raising; by
                default ``MTLS_HOOKS_INBOX_MAX_ATTEMPTS`` attempts, backoff capped at
                ``MTLS_HOOKS_INBOX_MAX_WAIT_S``.
            options: endpoint options shared by every endpoint.

        Raises:
            ConfigurationError: an unknown option, or invalid settings once ``app`` is given.
        """
        check_option_names(options, "WebhookReceiver()")
        self._options: dict[str, Any] = dict(options)
        self._store = store
        self._limiter = rate_limiter
        self._inbox = inbox
        self._inbox_retry = inbox_retry
        self._endpoints: dict[str, WebhookEndpoint] = {}
        self._handlers: dict[tuple[str | None, str | None], Callable[..., Awaitable[Any]]] = {}
        self._states: weakref.WeakKeyDictionary[Quart, _AppState] = weakref.WeakKeyDictionary()
        if path is not None:
            self.endpoint(path, name=name)
        if app is not None:
            self.init_app(app)

    # -- configuration -------------------------------------------------------------------

    def init_app(self, app: Quart) -> None:
        """Read ``app.config``, compile every endpoint and register its route on ``app``.

        ``MTLS_HOOKS_*`` environment variables are defaults beneath ``app.config`` (strings,
        coerced as ``app.config`` strings are), so ``mtls-hooks serve`` and the app share one
        environment; ``MTLS_HOOKS_PINS`` and ``MTLS_HOOKS_ALLOW`` there are the server's.

        Raises:
            ConfigurationError: an unknown ``MTLS_HOOKS_*`` key or environment variable
                (naming the closest valid one), invalid option values, or another receiver
                already on ``app``.
        """
        existing = app.extensions.get(EXTENSION_KEY)
        if existing is not None and existing is not self:
            raise ConfigurationError("this app already has a WebhookReceiver")
        endpoint_config, receiver_config, extra = _read_config(
            {**_environment(os.environ), **app.config}
        )
        for name, entry in endpoint_config.items():
            if name not in self._endpoints:
                if "path" not in entry:
                    raise ConfigurationError(f"MTLS_HOOKS_ENDPOINTS[{name!r}] needs a 'path'")
                self._endpoints[name] = WebhookEndpoint(self, name, entry["path"], {})
        for endpoint_name, _ in self._handlers:
            self._check_endpoint_name(endpoint_name)
        # Everything that can fail is validated before the store opens or a route is added,
        # so a refused configuration leaves neither an open database nor half an app behind.
        compiled = [
            self._compile(endpoint_config, receiver_config, endpoint)
            for endpoint in self._endpoints.values()
        ]
        inbox = self._open_inbox(extra, needed=any(c.mode == "inbox" for c in compiled))
        try:
            state = self._make_state(extra)
        except BaseException:
            if inbox[0] is not None and inbox[1]:
                inbox[0].close()
            raise
        state.inbox, state.owns_inbox, state.inbox_settings = inbox
        state.config_endpoints = endpoint_config
        state.receiver_config = receiver_config
        self._states[app] = state
        app.extensions[EXTENSION_KEY] = self
        state.lean = mount_lean_path(app)
        for settings in compiled:
            self._route(app, state, settings)

        async def drain() -> None:
            from quart import current_app

            # Quart's own bound on background work at shutdown suits handlers just as well.
            timeout_s = current_app.config.get("BACKGROUND_TASK_SHUTDOWN_TIMEOUT", 5)
            await drain_handlers(state.handler_tasks, float(timeout_s))

        if state.inbox is not None:
            app.before_serving(functools.partial(self._start_inbox_worker, app, state))
            # First: the inbox's running handlers get their grace while the rest is open.
            app.after_serving(functools.partial(self._stop_inbox_worker, state))
        # Registered before the store's close: after_serving functions run in order, and a
        # handler that finishes during the drain still settles its claim in an open store.
        app.after_serving(drain)
        if state.owns_store:
            app.after_serving(state.store.aclose)
        if state.inbox is not None and state.owns_inbox:
            app.after_serving(state.inbox.aclose)

    def _make_state(self, extra: Mapping[str, Any]) -> _AppState:
        """Open the app's dedupe store (and rate limiter) from its settings.

        Raises:
            ConfigurationError: both a URL and a path, or an unusable URL.
            StoreUnavailableError: a PostgreSQL or Redis store that cannot be reached now.
        """
        store: DedupeStore
        if self._store is not None:
            store, owned = self._store, False
        else:
            url, path = extra["DEDUPE_URL"], extra["DEDUPE_PATH"]
            if url and path:
                raise ConfigurationError(
                    "set MTLS_HOOKS_DEDUPE_URL or MTLS_HOOKS_DEDUPE_PATH (its SQLite alias), "
                    "not both"
                )
            retention_s, lease_s = extra["RETENTION_S"], extra["LEASE_S"]
            if path:
                store = SQLiteDedupeStore(path, retention_s=retention_s, lease_s=lease_s)
            else:
                store = open_dedupe_store(
                    url or "memory:",
                    namespace=extra["DEDUPE_NAMESPACE"],
                    retention_s=retention_s,
                    lease_s=lease_s,
                    max_entries=extra["DEDUPE_MAX_ENTRIES"],
                )
            owned = True
        limiter = self._limiter
        if limiter is None:
            # A shared store keeps the buckets too, so every worker and machine counts alike.
            shared = getattr(store, "rate_limiter", None)
            limiter = shared() if callable(shared) else MemoryRateLimiter()
        return _AppState(store, owned, limiter, {}, {})

    def _open_inbox(
        self, extra: Mapping[str, Any], *, needed: bool
    ) -> tuple[Inbox | None, bool, dict[str, Any]]:
        """Open the app's inbox when an endpoint is in inbox mode or a URL is configured.

        Returns:
            The inbox (or ``None``), whether the app owns it, and its worker's settings.

        Raises:
            ConfigurationError: inbox mode without an inbox, or a URL that is not durable.
            StoreUnavailableError: the inbox's database cannot be reached now.
        """
        url = extra["INBOX_URL"]
        concurrency = extra["INBOX_CONCURRENCY"]
        retry = self._inbox_retry or InboxRetry.of(
            max_attempts=extra["INBOX_MAX_ATTEMPTS"], max_wait_s=extra["INBOX_MAX_WAIT_S"]
        )
        settings = {
            "concurrency": concurrency,
            "lease_s": extra["INBOX_LEASE_S"],
            "retry": retry,
            "handler_timeout_s": extra["INBOX_HANDLER_TIMEOUT_S"],
        }
        if self._inbox is not None:
            return self._inbox, False, settings
        if not url:
            if needed:
                raise ConfigurationError(
                    "an endpoint has mode='inbox' but no inbox is configured: set "
                    "MTLS_HOOKS_INBOX_URL (sqlite:///path or postgresql://...)"
                )
            return None, False, settings
        if not isinstance(url, str) or urlsplit(url).scheme.lower() == "memory":
            raise ConfigurationError(
                f"MTLS_HOOKS_INBOX_URL must name a durable store (sqlite:///path or "
                f"postgresql://...), got {url!r}: an event answered 202 must survive a crash"
            )
        try:
            return Inbox(url), True, settings
        except StoreUnavailableError as exc:
            raise StoreUnavailableError(f"inbox store: {exc}") from exc

    async def _start_inbox_worker(self, app: Quart, state: _AppState) -> None:
        if not state.inbox_in_app or state.inbox_settings["concurrency"] == 0:
            return  # handled by `mtls-hooks process-inbox`, or another worker made here
        # Running handlers get Quart's bound on background work at shutdown, as direct ones do.
        grace_s = float(app.config.get("BACKGROUND_TASK_SHUTDOWN_TIMEOUT", 5))
        worker = self._new_inbox_worker(app, state, {"shutdown_grace_s": grace_s})
        stopped = asyncio.Event()
        task = asyncio.get_running_loop().create_task(_keep_running(worker, stopped))
        state.inbox_worker, state.inbox_task, state.inbox_stopped = worker, task, stopped

    @staticmethod
    async def _stop_inbox_worker(state: _AppState) -> None:
        worker, task, stopped = state.inbox_worker, state.inbox_task, state.inbox_stopped
        state.inbox_worker = state.inbox_task = state.inbox_stopped = None
        if worker is None or task is None or stopped is None:
            return
        stopped.set()  # a worker waiting to restart after a fault does not
        worker.stop()  # running handlers finish within the grace; the rest go back
        await asyncio.gather(task, return_exceptions=True)

    def _new_inbox_worker(
        self, app: Quart, state: _AppState, options: Mapping[str, Any]
    ) -> InboxWorker:
        if state.inbox is None:
            raise ConfigurationError(
                "this app has no inbox: set MTLS_HOOKS_INBOX_URL (sqlite:///path or "
                "postgresql://...)"
            )
        settings = {
            **state.inbox_settings,
            "concurrency": state.inbox_settings["concurrency"] or 8,
            **options,
        }
        # Quart's AppContext is an async context manager without the ABC's registration.
        context = cast("Callable[[], AbstractAsyncContextManager[Any]]", app.app_context)
        return InboxWorker(state.inbox.store, self._handlers, context=context, **settings)

    def inbox(self, app: Quart) -> Inbox:
        """Return the inbox of ``app`` (operators' view: status, messages, retry, purge).

        Raises:
            KeyError: the receiver was not initialised on ``app``.
            ConfigurationError: ``app`` has no inbox.
        """
        inbox = self._states[app].inbox
        if inbox is None:
            raise ConfigurationError("this app has no inbox: set MTLS_HOOKS_INBOX_URL")
        return inbox

    def inbox_worker(self, app: Quart, **options: Any) -> InboxWorker:
        """Make a worker that runs ``app``'s handlers from its inbox (``process-inbox``).

        The app then starts no inbox worker of its own when it serves: run this one (in
        another process, or beside the server) with ``await worker.run()``.

        Args:
            app: an app this receiver was initialised on.
            options: :class:`~mtls_hooks.inbox.InboxWorker` settings that override the
                app's (``concurrency``, ``lease_s``, ``retry``, ``poll_interval_s``, ...).

        Raises:
            KeyError: the receiver was not initialised on ``app``.
            ConfigurationError: ``app`` has no inbox, or a bad setting.
        """
        state = self._states[app]
        worker = self._new_inbox_worker(app, state, options)
        state.inbox_in_app = False
        return worker

    @property
    def handlers(self) -> Mapping[tuple[str | None, str | None], Callable[..., Awaitable[Any]]]:
        """The registered handlers by ``(endpoint, event type)`` (read-only, live)."""
        return types.MappingProxyType(self._handlers)

    def endpoint(
        self, path: str, *, name: str | None = None, **options: Unpack[EndpointOptions]
    ) -> WebhookEndpoint:
        """Declare a webhook endpoint at ``path`` with its own options.

        Args:
            path: the URL rule, e.g. ``"/hooks/billing"``.
            name: a short name for logs, events and dedupe keys; defaults to ``path``.
            options: options that override the receiver's and the config's for this endpoint.

        Returns:
            The endpoint, for endpoint-specific handlers.

        Raises:
            ConfigurationError: a duplicate name or path, or invalid options.
        """
        name = path if name is None else name
        check_option_names(options, f"endpoint {name!r}")
        for other in self._endpoints.values():
            if name == other.name or path == other.path:
                raise ConfigurationError(f"endpoint {name!r} at {path!r} is declared twice")
        endpoint = WebhookEndpoint(self, name, path, options)
        compiled = [
            (app, state, self._compile(state.config_endpoints, state.receiver_config, endpoint))
            for app, state in self._states.items()
        ]
        for _, state, settings in compiled:
            if settings.mode == "inbox" and state.inbox is None:
                raise ConfigurationError(
                    f"endpoint {name!r} has mode='inbox' but its app has no inbox: set "
                    "MTLS_HOOKS_INBOX_URL (sqlite:///path or postgresql://...)"
                )
        self._endpoints[name] = endpoint
        for app, state, settings in compiled:
            self._route(app, state, settings)
        return endpoint

    def _compile(
        self,
        endpoint_config: Mapping[str, Mapping[str, Any]],
        receiver_config: Mapping[str, Any],
        endpoint: WebhookEndpoint,
    ) -> EndpointSettings:
        entry = {k: v for k, v in endpoint_config.get(endpoint.name, {}).items() if k != "path"}
        layers = [
            ("MTLS_HOOKS_*", receiver_config),
            ("WebhookReceiver()", self._options),
            (f"MTLS_HOOKS_ENDPOINTS[{endpoint.name!r}]", entry),
            (f"endpoint {endpoint.name!r}", endpoint._options),
        ]
        return compile_endpoint(endpoint.name, endpoint.path, merge_options(layers))

    def _route(self, app: Quart, state: _AppState, settings: EndpointSettings) -> None:
        state.endpoints[settings.name] = settings
        view = WebhookView(
            settings,
            state.store,
            self._handlers,
            state.handler_tasks,
            state.limiter,
            inbox=state.inbox,
        )
        app.add_url_rule(
            settings.path,
            f"{EXTENSION_KEY}.{settings.name}",
            view.handle,
            methods=_METHODS,
            provide_automatic_options=False,
        )
        # A rule with converters (<name>) matches many paths: only Quart's router knows which.
        if state.lean is not None and not settings.quart_request and "<" not in settings.path:
            state.lean.views[settings.path] = view

    def settings(self, app: Quart, name: str) -> EndpointSettings:
        """Return the compiled settings of endpoint ``name`` on ``app`` (for inspection).

        Raises:
            KeyError: no such endpoint on that app.
        """
        return self._states[app].endpoints[name]

    def store(self, app: Quart) -> DedupeStore:
        """Return the dedupe store used on ``app``.

        Raises:
            KeyError: the receiver was not initialised on ``app``.
        """
        return self._states[app].store

    # -- handlers ------------------------------------------------------------------------

    def on(self, event_type: str, *, endpoint: str | None = None) -> Callable[[F], F]:
        """Register the handler of ``event_type``, on every endpoint or on one.

        Handlers may be ``async def`` (awaited) or plain functions (run in a worker thread).

        Raises:
            ConfigurationError: an empty type, or a handler for it already registered there.
        """
        if not isinstance(event_type, str) or not event_type:
            raise ConfigurationError("event type must be a non-empty string")

        def decorator(handler: F) -> F:
            return self._register(endpoint, event_type, handler)

        return decorator

    def on_any(self, handler: F) -> F:
        """Register the fallback handler for event types without their own handler.

        Raises:
            ConfigurationError: a fallback is already registered.
        """
        return self._register(None, None, handler)

    fallback = on_any

    def _check_endpoint_name(self, name: str | None) -> None:
        if name is not None and name not in self._endpoints:
            raise ConfigurationError(
                f"handlers registered for unknown endpoint {name!r}"
                f"{did_you_mean(name, self._endpoints, cutoff=0.5)}"
            )

    def _register(self, endpoint: str | None, event_type: str | None, handler: F) -> F:
        if self._states:  # after init_app every endpoint is known: catch a typo right here
            self._check_endpoint_name(endpoint)
        key = (endpoint, event_type)
        if key in self._handlers:
            what = "fallback" if event_type is None else f"handler for {event_type!r}"
            where = "" if endpoint is None else f" on endpoint {endpoint!r}"
            raise ConfigurationError(f"a {what}{where} is already registered")
        call = getattr(handler, "__call__", None)  # noqa: B004 (async callable objects count)
        if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call):
            self._handlers[key] = handler
        else:
            from quart.utils import run_sync

            self._handlers[key] = run_sync(handler)
        return handler


def _read_config(
    config: Mapping[str, Any],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Split ``MTLS_HOOKS_*`` keys into endpoint entries, endpoint defaults and store settings.

    Raises:
        ConfigurationError: an unknown key (with the closest valid one) or a malformed
            ``MTLS_HOOKS_ENDPOINTS``.
    """
    defaults: dict[str, Any] = {}
    extra = dict(_RECEIVER_KEYS)
    for key, value in config.items():
        if not isinstance(key, str) or not key.startswith(CONFIG_PREFIX):
            continue
        short = key[len(CONFIG_PREFIX) :]
        if short in _ENDPOINT_KEYS:
            defaults[_ENDPOINT_KEYS[short]] = value
        elif short in _RECEIVER_KEYS:
            extra[short] = value
        elif short not in _SERVER_KEYS:
            hint = did_you_mean(key, _KNOWN_KEYS, cutoff=0.5)
            raise ConfigurationError(f"unknown setting {key!r}{hint}")
    for short in ("RETENTION_S", "LEASE_S"):
        extra[short] = _number(extra[short], CONFIG_PREFIX + short)
    extra["DEDUPE_MAX_ENTRIES"] = int(
        _number(extra["DEDUPE_MAX_ENTRIES"], CONFIG_PREFIX + "DEDUPE_MAX_ENTRIES")
    )
    for short, least in (("INBOX_CONCURRENCY", 0), ("INBOX_MAX_ATTEMPTS", 1)):
        extra[short] = _whole(extra[short], CONFIG_PREFIX + short, least)
    for short in ("INBOX_MAX_WAIT_S", "INBOX_LEASE_S", "INBOX_HANDLER_TIMEOUT_S"):
        value = _number(extra[short], CONFIG_PREFIX + short)
        if not 0 < value < float("inf"):
            raise ConfigurationError(f"{CONFIG_PREFIX}{short} must be > 0, got {value!r}")
        extra[short] = value
    endpoints: Any = extra.pop("ENDPOINTS") or {}
    if not isinstance(endpoints, Mapping):
        raise ConfigurationError("MTLS_HOOKS_ENDPOINTS must map endpoint names to options")
    entries: dict[str, dict[str, Any]] = {}
    for name, entry in endpoints.items():
        if not isinstance(entry, Mapping):
            raise ConfigurationError(f"MTLS_HOOKS_ENDPOINTS[{name!r}] must be a mapping")
        options = {k: v for k, v in entry.items() if k != "path"}
        check_option_names(options, f"MTLS_HOOKS_ENDPOINTS[{name!r}]")
        entries[str(name)] = dict(entry)
    return entries, defaults, extra


def _environment(environ: Mapping[str, str]) -> dict[str, str]:
    """Return the receiver's ``MTLS_HOOKS_*`` variables of ``environ``.

    Raises:
        ConfigurationError: a ``MTLS_HOOKS_*`` variable neither the server nor the receiver
            knows, naming the closest of both (the check :mod:`mtls_hooks.serving._config` does).
    """
    env_settings(environ, CONFIG_PREFIX)
    return {
        name: value
        for name, value in environ.items()
        if name.startswith(CONFIG_PREFIX) and name[len(CONFIG_PREFIX) :] in _ENVIRONMENT_KEYS
    }


def _whole(value: Any, key: str, least: int) -> int:
    number = _number(value, key)
    if number != int(number) or number < least:
        raise ConfigurationError(f"{key} must be a whole number >= {least}, got {value!r}")
    return int(number)


async def _keep_running(worker: InboxWorker, stopped: asyncio.Event) -> None:
    """Run the app's inbox worker until the app stops it, restarting it after a fault.

    The server goes on answering 202 whatever the worker does, so a worker that ended on an
    error (a database error the store does not translate) must not stay down: it is logged
    and started again, 0.5 s later, doubling to a minute while it keeps failing.
    """
    from mtls_hooks.receiver._pipeline import logger

    delay_s = _RESTART_FIRST_S
    while not stopped.is_set():
        try:
            await worker.run()
        except Exception:
            logger.exception("the inbox worker stopped on an error; restarting in %g s", delay_s)
        else:
            return  # stopped by the app
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), delay_s)
        delay_s = min(delay_s * 2, _RESTART_MAX_S)


_RESTART_FIRST_S: Final = 0.5
_RESTART_MAX_S: Final = 60.0


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool):
        raise ConfigurationError(f"{key} must be a number")
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{key} must be a number, got {value!r}") from exc
