"""Fixtures of the store tests: one :class:`Spec` per backend and test, cleaned up after."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from mtls_hooks.stores._replay import DedupeStore
from tests.stores._backends import BACKENDS, Spec, need, new_namespace

StoreFactory = Callable[..., DedupeStore]


def spec_for(backend: str, tmp_path: Path) -> Spec:
    need(backend)
    if backend == "sqlite":
        return Spec(backend, str(tmp_path / "dedupe.db"))
    return Spec(backend, new_namespace())


@pytest.fixture(params=BACKENDS)
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Spec]:
    made = spec_for(request.param, tmp_path)
    yield made
    made.drop()


@pytest_asyncio.fixture
async def make_store(spec: Spec) -> AsyncIterator[StoreFactory]:
    """Open stores on the test's database; every one is closed after the test."""
    opened: list[DedupeStore] = []

    def factory(**kwargs: Any) -> DedupeStore:
        store = spec.open(**kwargs)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.aclose()


@pytest.fixture
def namespace() -> Iterator[str]:
    """A fresh PostgreSQL table prefix and Redis key prefix, dropped afterwards."""
    name = new_namespace()
    yield name
    for backend in ("postgresql", "redis"):
        # A server that is not running left nothing behind.
        with contextlib.suppress(Exception):
            Spec(backend, name).drop()
