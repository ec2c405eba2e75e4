"""The durable queue engine shared by the outbox and the inbox: see ``_protocol``."""

from mtls_hooks.queue._memory import MemoryQueueStore
from mtls_hooks.queue._protocol import (
    AttemptRecord,
    Job,
    JobState,
    NewJob,
    QueueStats,
    QueueStore,
    Settlement,
    StoreUnavailableError,
    Target,
)
from mtls_hooks.queue._sqlite import SQLiteQueueStore
from mtls_hooks.queue._url import open_store

__all__ = [
    "AttemptRecord",
    "Job",
    "JobState",
    "MemoryQueueStore",
    "NewJob",
    "QueueStats",
    "QueueStore",
    "SQLiteQueueStore",
    "Settlement",
    "StoreUnavailableError",
    "Target",
    "open_store",
]


def __getattr__(name: str) -> object:
    # psycopg is an extra: imported only when a PostgreSQL store is asked for.
    if name == "PostgresQueueStore":
        from mtls_hooks.queue._postgres import PostgresQueueStore

        return PostgresQueueStore
    raise AttributeError(f"module 'mtls_hooks.queue' has no attribute {name!r}")
