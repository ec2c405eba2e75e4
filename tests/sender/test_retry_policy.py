"""The retry policy on its own: Retry-After parsing, backoff, schedules, replaceable parts."""

from __future__ import annotations

import email.utils
import random
import sys
from collections.abc import Callable
from typing import Any

import pytest
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from mtls_hooks.core._errors import ConfigurationError, RetriesExhaustedError, StatusError
from mtls_hooks.sender._retry import (
    AttemptFailed,
    RetryPolicy,
    parse_retry_after,
    retry_if_retryable,
    wait_backoff,
    wait_retry_after,
)
from tests.sender.conftest import SECRET, FakeTime, SenderPki, deliver, exact_policy
from tests.sender.scripted import ScriptedServer, Status

Serve = Callable[..., ScriptedServer]
NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param("120", 120.0, id="seconds"),
        pytest.param(" 0 ", 0.0, id="zero"),
        pytest.param(email.utils.formatdate(NOW + 45, usegmt=True), 45.0, id="http-date"),
        pytest.param(email.utils.formatdate(NOW - 600, usegmt=True), 0.0, id="date-in-past"),
        pytest.param("Sun, 06 Nov 1994 08:49:37 -0000", 0.0, id="naive-date"),
        pytest.param("-5", None, id="negative"),
        pytest.param("1.5", None, id="fraction"),
        pytest.param("soon", None, id="junk"),
        pytest.param("", None, id="empty"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == expected


def _state(attempt_number: int, exc: BaseException | None = None) -> RetryCallState:
    state = RetryCallState(Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt_number
    if exc is not None:
        try:
            raise exc
        except BaseException:
            state.set_exception(sys.exc_info())  # type: ignore[arg-type]
    return state


def test_backoff_without_jitter_is_exact_and_capped() -> None:
    wait = wait_backoff(initial_s=2, multiplier=3, max_s=20, jitter=0)
    assert [wait(_state(n)) for n in range(1, 6)] == [2, 6, 18, 20, 20]


def test_backoff_jitter_is_seeded_and_bounded() -> None:
    first = wait_backoff(initial_s=10, multiplier=1, max_s=10, rng=random.Random(7))
    again = wait_backoff(initial_s=10, multiplier=1, max_s=10, rng=random.Random(7))
    waits = [first(_state(1)) for _ in range(50)]
    assert waits == [again(_state(1)) for _ in range(50)]
    assert all(8 <= w <= 12 for w in waits)
    assert len(set(waits)) > 1


def test_backoff_never_overflows() -> None:
    assert wait_backoff(initial_s=1, multiplier=10, max_s=5, jitter=0)(_state(10_000)) == 5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_s": -1, "multiplier": 2, "max_s": 1},
        {"initial_s": 1, "multiplier": float("nan"), "max_s": 1},
        {"initial_s": 1, "multiplier": 2, "max_s": -1},
        {"initial_s": 1, "multiplier": 2, "max_s": 1, "jitter": 1.5},
    ],
)
def test_backoff_rejects_bad_numbers(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        wait_backoff(**kwargs)


def test_retry_after_wins_and_is_clamped() -> None:
    wait = wait_retry_after(wait_backoff(initial_s=1, multiplier=2, max_s=9, jitter=0), max_s=60)
    throttled = AttemptFailed("429", retryable=True, kind="status", retry_after_s=90)
    assert wait(_state(1, throttled)) == 60
    assert wait.reason(_state(1, throttled)) == "retry-after"
    plain = AttemptFailed("503", retryable=True, kind="status")
    assert wait(_state(3, plain)) == 4
    assert wait.reason(_state(3, plain)) == "backoff"


def test_only_retryable_failures_are_retried() -> None:
    retry = retry_if_retryable()
    assert retry(_state(1, AttemptFailed("503", retryable=True, kind="status")))
    assert not retry(_state(1, AttemptFailed("410", retryable=False, kind="gone")))
    assert not retry(_state(1, ValueError("a bug is not retried")))


def _exhaust(
    policy: RetryPolicy, script: list[Status], pki: SenderPki, fake_time: FakeTime, serve: Serve
) -> RetriesExhaustedError:
    server = serve(script)
    kwargs = {"signing_keys": SECRET, **pki.client(), **fake_time.kwargs(), "retry": policy}
    with pytest.raises(RetriesExhaustedError) as caught:
        deliver("sync", kwargs, server.url(), b"{}")
    return caught.value


def _near(waits: list[float], nominal: list[float], jitter: float = 0.2) -> bool:
    return len(waits) == len(nominal) and all(
        n * (1 - jitter) <= w <= n * (1 + jitter) for w, n in zip(waits, nominal, strict=True)
    )


def test_interactive_schedule_fits_in_a_minute(
    pki: SenderPki, fake_time: FakeTime, serve: Serve
) -> None:
    # As documented: 4 tries, waiting about 2 s, 6 s and 18 s.
    policy = RetryPolicy.interactive(rng=random.Random(7))
    error = _exhaust(policy, [Status(503)] * 4, pki, fake_time, serve)
    assert str(error).startswith("gave up after 4 attempt(s) (attempt limit)")
    assert _near(fake_time.sleeps, [2, 6, 18])
    assert sum(fake_time.sleeps) < 40


def test_interactive_deadline_stops_at_a_minute(
    pki: SenderPki, fake_time: FakeTime, serve: Serve
) -> None:
    # Retry-After 30 each time: the third try ends at 60 s, and a third wait would pass it.
    policy = RetryPolicy.interactive(rng=random.Random(7))
    script = [Status(503, {"Retry-After": "30"})] * 4
    error = _exhaust(policy, script, pki, fake_time, serve)
    assert str(error).startswith("gave up after 3 attempt(s) (deadline of 60 s)")
    assert fake_time.sleeps == [30.0, 30.0]


def test_default_schedule_reaches_hours_within_a_day(
    pki: SenderPki, fake_time: FakeTime, serve: Serve
) -> None:
    # As documented: 8 tries within 24 h, waiting about 5 s, 30 s, 3 min, 18 min, 1.8 h,
    # 8 h and 8 h; the day-long deadline never cuts that schedule short.
    policy = RetryPolicy.default(rng=random.Random(7))
    error = _exhaust(policy, [Status(503)] * 8, pki, fake_time, serve)
    assert str(error).startswith("gave up after 8 attempt(s) (attempt limit)")
    assert _near(fake_time.sleeps, [5, 30, 180, 1080, 6480, 28800, 28800])
    assert 12 * 3600 < sum(fake_time.sleeps) < 24 * 3600


@pytest.mark.parametrize(
    "changes", [{"attempt_timeout_s": 0}, {"deadline_s": -1}], ids=["timeout", "deadline"]
)
def test_policy_rejects_bad_bounds(changes: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(**changes)  # type: ignore[arg-type]


def test_a_replaced_predicate_decides(
    pki: SenderPki, fake_time: FakeTime, serve: Callable[..., ScriptedServer]
) -> None:
    # A caller whose receiver answers 409 while busy can make it retryable.
    def busy(exc: BaseException) -> bool:
        return isinstance(exc, AttemptFailed) and (exc.retryable or exc.status_code == 409)

    server = serve([Status(409), Status(200)])
    policy = exact_policy(retry=retry_if_exception(busy), stop=stop_after_attempt(3))
    kwargs = {"signing_keys": SECRET, **pki.client(), **fake_time.kwargs(), "retry": policy}
    result = deliver("sync", kwargs, server.url(), b"{}")
    assert [a.status_code for a in result.attempts] == [409, 200]
    assert fake_time.sleeps == [1.0]
    server.script.append(Status(409))
    with pytest.raises(StatusError):
        deliver("sync", kwargs | {"retry": exact_policy()}, server.url(), b"{}")


def test_a_predicate_that_declines_reports_the_status_not_exhaustion(
    pki: SenderPki, fake_time: FakeTime, serve: Callable[..., ScriptedServer]
) -> None:
    def never(exc: BaseException) -> bool:
        return False

    server = serve([Status(503)])
    kwargs = {"signing_keys": SECRET, **pki.client(), **fake_time.kwargs(),
              "retry": exact_policy(retry=retry_if_exception(never))}  # fmt: skip
    with pytest.raises(StatusError, match="receiver answered 503") as caught:
        deliver("sync", kwargs, server.url(), b"{}")
    assert not isinstance(caught.value, RetriesExhaustedError)
    assert caught.value.status_code == 503
    assert fake_time.sleeps == []
