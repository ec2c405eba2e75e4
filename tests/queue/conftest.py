"""Stores under test: every conformance test runs on memory, SQLite and PostgreSQL.

PostgreSQL tests are isolated by a fresh schema each (``options=-csearch_path=...`` in the
URL), dropped afterwards, so parallel xdist workers never share a table.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from mtls_hooks.queue import QueueStore, open_store
from tests.peers import PG_URL, need_tcp


@dataclass
class FakeClock:
    """Epoch seconds that only the test moves."""

    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@contextlib.contextmanager
def pg_schema(extra: str = "") -> Iterator[str]:
    """A fresh schema; yields a store URL whose search_path selects it. Dropped on exit."""
    need_tcp("PostgreSQL", "127.0.0.1", 5432)
    schema = "mtls_test_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}{extra}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def pg_url() -> Iterator[str]:
    with pg_schema() as url:
        yield url


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    kind = request.param
    if kind == "memory":
        yield "memory://"
    elif kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'queue.sqlite3'}"
    else:
        # prepare_threshold=none: every statement must work behind PgBouncer's transaction mode.
        with pg_schema("&prepare_threshold=none") as url:
            yield url


@pytest.fixture
def store(store_url: str, clock: FakeClock) -> Iterator[QueueStore]:
    opened = open_store(store_url, clock=clock)
    try:
        yield opened
    finally:
        opened.close()
