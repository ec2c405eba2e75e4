"""Open a queue store from a URL: ``sqlite:///path``, ``postgresql://...``, ``memory://``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.core._suggest import did_you_mean
from mtls_hooks.queue._protocol import QueueStore

__all__ = ["open_store"]

_SCHEMES = ("sqlite", "postgresql", "postgres", "memory")
# Our own query parameters, taken out of a PostgreSQL URL before libpq sees it.
_PG_OWN = ("prepare_threshold", "max_connections")


def open_store(url: str, *, clock: Callable[[], float] = time.time) -> QueueStore:
    """Open the queue store that ``url`` names.

    * ``sqlite:///relative/path`` or ``sqlite:////absolute/path``; ``?synchronous=normal``
      trades power-loss durability for speed;
    * ``postgresql://user@host:5432/db`` (libpq URL; ``?prepare_threshold=none`` behind
      PgBouncer, ``?max_connections=N`` for the pool, ``?options=-csearch_path=s``);
    * ``memory://``: in this process only, for tests.

    Raises:
        ConfigurationError: a malformed URL or an unknown scheme or parameter.
        StoreUnavailableError: the database cannot be opened or reached.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"store URL must look like sqlite:///path or postgresql://host/db, got {url!r}"
        )
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise ConfigurationError(f"malformed store URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ConfigurationError(
            f"unknown store URL scheme {parts.scheme!r}{did_you_mean(scheme, _SCHEMES)}"
        )
    if scheme == "memory":
        from mtls_hooks.queue._memory import MemoryQueueStore

        return MemoryQueueStore(clock=clock)
    if scheme == "sqlite":
        return _open_sqlite(parts.netloc, parts.path, dict(query), clock)
    own = {k: v for k, v in query if k in _PG_OWN}
    rest = [(k, v) for k, v in query if k not in _PG_OWN]
    kwargs: dict[str, Any] = {}
    try:
        if "prepare_threshold" in own:
            value = own["prepare_threshold"].lower()
            kwargs["prepare_threshold"] = None if value in ("none", "") else int(value)
        if "max_connections" in own:
            kwargs["max_connections"] = int(own["max_connections"])
    except ValueError as exc:
        raise ConfigurationError(f"malformed store URL parameter: {exc}") from exc
    if not parts.hostname and not parts.path.strip("/"):
        raise ConfigurationError("a PostgreSQL store URL needs a host or database name")
    from mtls_hooks.queue._postgres import PostgresQueueStore

    # quote_via=quote: libpq decodes %20, never "+", as a space (options=-c... -c...).
    query_text = urlencode(rest, quote_via=quote)
    libpq_url = urlunsplit(parts._replace(scheme="postgresql", query=query_text))
    return PostgresQueueStore(libpq_url, clock=clock, **kwargs)


def _open_sqlite(
    netloc: str, path: str, query: dict[str, str], clock: Callable[[], float]
) -> QueueStore:
    if netloc:
        raise ConfigurationError(
            f"sqlite URL has a host {netloc!r}: use sqlite:///relative or sqlite:////absolute"
        )
    unknown = set(query) - {"synchronous"}
    if unknown:
        name = sorted(unknown)[0]
        raise ConfigurationError(
            f"unknown sqlite URL parameter {name!r}{did_you_mean(name, ['synchronous'])}"
        )
    file_path = path[1:] if path.startswith("/") else path
    if not file_path:
        raise ConfigurationError("sqlite URL needs a file path: sqlite:///queue.sqlite3")
    from mtls_hooks.queue._sqlite import SQLiteQueueStore

    return SQLiteQueueStore(file_path, synchronous=query.get("synchronous", "full"), clock=clock)
