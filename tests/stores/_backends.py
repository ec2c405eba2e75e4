"""The four dedupe backends the conformance suite runs against, and how to reach each.

A :class:`Spec` names one database (a SQLite file, a PostgreSQL table namespace, a Redis key
prefix) and opens a new store object on it, in this process or in a spawned one: every test
gets its own namespace, so parallel tests never share ids.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from mtls_hooks.stores._replay import DedupeStore, MemoryDedupeStore, SQLiteDedupeStore
from tests.peers import PG_URL, REDIS_URL, need_tcp

if TYPE_CHECKING:
    from mtls_hooks.receiver._receiver import WebhookReceiver
    from tests.receiver.conftest import Sender

BACKENDS = ("memory", "sqlite", "postgresql", "redis")
SHARED = ("sqlite", "postgresql", "redis")


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def need(backend: str) -> None:
    """Skip (or fail under CI) when the backend's server is not reachable."""
    if backend == "postgresql":
        parts = urlsplit(PG_URL)
        need_tcp("PostgreSQL", parts.hostname or "127.0.0.1", parts.port or 5432)
    elif backend == "redis":
        parts = urlsplit(REDIS_URL)
        need_tcp("Redis", parts.hostname or "127.0.0.1", parts.port or 6379)


def new_namespace() -> str:
    return f"t_{uuid.uuid4().hex[:16]}"


@dataclass(frozen=True)
class Spec:
    """One dedupe database; picklable, so spawned processes open their own store on it."""

    backend: str
    where: str  # the SQLite path, or the namespace of the shared stores

    def open(self, **kwargs: Any) -> DedupeStore:
        if self.backend == "memory":
            return MemoryDedupeStore(**kwargs)
        if self.backend == "sqlite":
            return SQLiteDedupeStore(self.where, **kwargs)
        if self.backend == "postgresql":
            from mtls_hooks.stores._postgres import PostgresDedupeStore

            return PostgresDedupeStore(PG_URL, namespace=self.where, **kwargs)
        from mtls_hooks.stores._redis import RedisDedupeStore

        kwargs.pop("clock", None)  # Redis keeps time itself
        return RedisDedupeStore(REDIS_URL, namespace=self.where, **kwargs)

    @property
    def clocked(self) -> bool:
        """True when an injected clock decides expiry (Redis expires keys by its own)."""
        return self.backend != "redis"

    def drop(self) -> None:
        """Remove what the test left in the shared server."""
        if self.backend == "postgresql":
            import psycopg

            with psycopg.connect(PG_URL, autocommit=True) as conn:
                for suffix in ("dedupe", "rate"):
                    conn.execute(f'DROP TABLE IF EXISTS "{self.where}_{suffix}"')
        elif self.backend == "redis":
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            try:
                keys = list(client.scan_iter(match=f"{self.where}:*", count=1000))
                if keys:
                    client.delete(*keys)
            finally:
                client.close()


def run(coro_factory: Callable[[], Any]) -> Any:
    return asyncio.run(coro_factory())


def app_with(config: dict[str, Any], sender: Sender, **options: Any) -> WebhookReceiver:
    """A Quart app with one receiver endpoint at ``/h`` signed by ``sender``; its receiver."""
    from quart import Quart

    from mtls_hooks.receiver._receiver import WebhookReceiver

    app = Quart(__name__)
    app.config.update(config)
    return WebhookReceiver(app, path="/h", keys=[sender.key], require_peer=False, **options)
