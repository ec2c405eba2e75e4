"""The small parts of the stores: rate parsing, the memory buckets' bound, URL handling."""

from __future__ import annotations

import asyncio

import pytest

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.stores._names import check_namespace, redact_url, split_key
from mtls_hooks.stores._ratelimit import MemoryRateLimiter, Rate, parse_rate, retry_after_header
from mtls_hooks.stores._replay import MemoryDedupeStore
from mtls_hooks.stores._url import open_dedupe_store
from tests.stores._backends import Clock


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("10/s", Rate(10, 1.0)),
        ("5 / minutes", Rate(5, 60.0)),
        ("100/min", Rate(100, 60.0)),
        ("2/hour", Rate(2, 3600.0)),
        ("1/day", Rate(1, 86400.0)),
        (None, None),
        (Rate(3, 1.0), Rate(3, 1.0)),
    ],
    ids=str,
)
def test_rates_parse(text: object, rate: Rate | None) -> None:
    assert parse_rate(text) == rate


def test_a_bucket_of_n_admits_n_at_once_then_one_per_interval() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock=clock)
    rate = Rate(4, 2.0)  # 4 at once, then one every 0.5 s

    async def run() -> list[float]:
        waits = [await limiter.acquire("k", rate) for _ in range(5)]
        clock.now += 0.5
        waits.append(await limiter.acquire("k", rate))
        return waits

    assert asyncio.run(run()) == [0.0, 0.0, 0.0, 0.0, pytest.approx(0.5), 0.0]


def test_memory_buckets_are_bounded_and_forget_full_ones_first() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(max_keys=3, clock=clock)
    rate = Rate(1, 10.0)

    async def run() -> float:
        await limiter.acquire("old", rate)
        clock.now += 20  # "old" is full again: nothing is lost by forgetting it
        for key in ("a", "b", "c"):
            await limiter.acquire(key, rate)
        return await limiter.acquire("a", rate)

    assert asyncio.run(run()) > 0  # "a" is still limited: a live bucket was kept
    assert len(limiter) == 3


@pytest.mark.parametrize(("wait_s", "header"), [(0.01, "1"), (1.0, "1"), (1.2, "2"), (59.9, "60")])
def test_retry_after_rounds_up_to_whole_seconds(wait_s: float, header: str) -> None:
    assert retry_after_header(wait_s) == header


def test_urls_never_show_a_password() -> None:
    assert redact_url("postgresql://u:p4ss@db/x") == "postgresql://u:***@db/x"
    assert redact_url("redis://:p4ss@cache:6379/0") == "redis://:***@cache:6379/0"
    assert redact_url("postgresql://u@db/x") == "postgresql://u@db/x"


def test_keys_split_at_the_last_space() -> None:
    assert split_key("my endpoint msg_1") == ("my endpoint", "msg_1")


@pytest.mark.parametrize("namespace", ["", "1abc", "a-b", "a" * 52, "a:b"])
def test_a_namespace_is_a_plain_identifier(namespace: str) -> None:
    with pytest.raises(ConfigurationError, match="namespace"):
        check_namespace(namespace)


def test_memory_url() -> None:
    assert isinstance(open_dedupe_store("memory:"), MemoryDedupeStore)
    with pytest.raises(ConfigurationError, match="no path"):
        open_dedupe_store("memory:/somewhere")
    with pytest.raises(ConfigurationError, match="names no file"):
        open_dedupe_store("sqlite:///")
