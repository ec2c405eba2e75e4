"""Dedupe stores selected by URL: ``memory:``, ``sqlite:///path``, ``postgresql://``, ``redis://``.

=========================================  ==================================================
URL                                        store
=========================================  ==================================================
``memory:``                                :class:`MemoryDedupeStore`: one process
``sqlite:////var/lib/hooks/dedupe.db``     :class:`SQLiteDedupeStore`: one machine;
``sqlite:///dedupe.db``                    three slashes, then the path as written (four
                                           for an absolute one, as in SQLAlchemy);
                                           ``?synchronous=full`` fsyncs every batch
``postgresql://user@db:5432/hooks``        :class:`PostgresDedupeStore`: every machine,
                                           the system of record (``postgres://`` too)
``redis://cache:6379/0``, ``rediss://``    :class:`RedisDedupeStore`: every machine, fast,
                                           may forget the last second of writes
=========================================  ==================================================

The PostgreSQL and Redis modules are imported only for their URLs, so their client libraries
are needed only where they are used (``pip install mtls-hooks[postgres]`` / ``[redis]``).
"""

from __future__ import annotations

import urllib.parse
from typing import Any, Final

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.core._suggest import did_you_mean
from mtls_hooks.stores._names import DEFAULT_NAMESPACE, redact_url
from mtls_hooks.stores._replay import (
    DEFAULT_LEASE_S,
    DEFAULT_MAX_ENTRIES,
    DEFAULT_RETENTION_S,
    DedupeStore,
    MemoryDedupeStore,
    SQLiteDedupeStore,
)

__all__ = ["SCHEMES", "open_dedupe_store"]

SCHEMES: Final = ("memory", "sqlite", "postgresql", "postgres", "redis", "rediss")
# Query options of a sqlite:/// URL, passed to SQLiteDedupeStore.
_SQLITE_OPTIONS: Final = ("synchronous",)


def open_dedupe_store(
    url: str,
    *,
    namespace: str = DEFAULT_NAMESPACE,
    retention_s: float = DEFAULT_RETENTION_S,
    lease_s: float = DEFAULT_LEASE_S,
    max_entries: int = DEFAULT_MAX_ENTRIES,
    check: bool = True,
) -> DedupeStore:
    """Create the dedupe store ``url`` names.

    Args:
        url: see the module docstring.
        namespace: the PostgreSQL table prefix and the Redis key prefix.
        retention_s: how long a processed id is remembered.
        lease_s: how long an unfinished claim blocks its id.
        max_entries: the bound of the memory store.
        check: for PostgreSQL and Redis, connect once now (and create the table), so that a
            wrong URL or an unreachable server fails at start-up rather than at the first
            webhook.

    Returns:
        The store, not yet connected for the event loop it will serve in.

    Raises:
        ConfigurationError: an unknown scheme, a malformed URL, a missing client library or
            invalid windows.
        StoreUnavailableError: with ``check``, the server cannot be reached.
    """
    if not isinstance(url, str):
        raise ConfigurationError("the dedupe URL must be a string")
    scheme, sep, rest = url.partition(":")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise ConfigurationError(
            f"dedupe URL {redact_url(url)!r} must start with one of "
            + ", ".join(f"{s}:" for s in SCHEMES)
        )
    if scheme == "memory":
        if rest.strip("/"):
            raise ConfigurationError(f"dedupe URL {url!r}: 'memory:' takes no path")
        return MemoryDedupeStore(retention_s=retention_s, lease_s=lease_s, max_entries=max_entries)
    if scheme == "sqlite":
        path, options = _sqlite_path(url)
        return SQLiteDedupeStore(
            path,
            retention_s=retention_s,
            lease_s=lease_s,
            synchronous=options.get("synchronous", "normal"),
        )
    store: Any
    if scheme in ("postgresql", "postgres"):
        module = _import("mtls_hooks.stores._postgres", "postgres", "psycopg")
        store = module.PostgresDedupeStore(
            url, namespace=namespace, retention_s=retention_s, lease_s=lease_s
        )
    else:
        module = _import("mtls_hooks.stores._redis", "redis", "redis")
        store = module.RedisDedupeStore(
            url, namespace=namespace, retention_s=retention_s, lease_s=lease_s
        )
    if check:
        store.check()
    return store  # type: ignore[no-any-return]


def _sqlite_path(url: str) -> tuple[str, dict[str, str]]:
    """Split ``sqlite:///path?synchronous=full`` into the path and the store's options."""
    parts = urllib.parse.urlsplit(url)
    if parts.netloc or not url.lower().startswith("sqlite:///"):
        raise ConfigurationError(
            f"dedupe URL {url!r} must be sqlite:///path (three slashes, no host)"
        )
    path = urllib.parse.unquote(url[len("sqlite:///") :].partition("?")[0])
    if not path:
        raise ConfigurationError(f"dedupe URL {url!r} names no file")
    options = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    for name in options:
        if name not in _SQLITE_OPTIONS:
            raise ConfigurationError(
                f"dedupe URL {url!r}: unknown option {name!r}"
                f"{did_you_mean(name, _SQLITE_OPTIONS, cutoff=0.5)}"
            )
    return path, options


def _import(module: str, extra: str, library: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigurationError(
            f"this dedupe URL needs {library}: pip install 'mtls-hooks[{extra}]' ({exc})"
        ) from exc
