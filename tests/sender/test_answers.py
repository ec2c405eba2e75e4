"""Answers a third-party receiver controls: their size and time are capped, both twins alike."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import pytest
from tenacity import stop_after_attempt

from mtls_hooks.core._errors import RetriesExhaustedError, StatusError
from mtls_hooks.core._problem import PROBLEM_CONTENT_TYPE
from mtls_hooks.sender._outcomes import _PROBLEM_MAX_BYTES
from tests.sender.conftest import KINDS, FakeTime, SenderPki, deliver, exact_kwargs
from tests.sender.scripted import ScriptedServer, Status, Trickle

Serve = Callable[..., ScriptedServer]

HUGE_BYTES = 8 * 1024 * 1024


@pytest.mark.parametrize("kind", KINDS)
def test_huge_answers_are_capped_and_their_connections_dropped(
    kind: str, pki: SenderPki, fake_time: FakeTime, serve: Serve
) -> None:
    body = b"x" * HUGE_BYTES
    server = serve([Status(200), Status(503, body=body), Status(200, body=body)])
    # A first delivery imports and sets up everything lazy, outside the measurement.
    deliver(kind, exact_kwargs(pki, fake_time), server.url(), b"{}")
    tracemalloc.start()
    try:
        result = deliver(kind, exact_kwargs(pki, fake_time), server.url(), b"{}")
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result.ok
    assert [a.status_code for a in result.attempts] == [503, 200]
    assert result.attempts[0].detail == "x" * 200  # the snippet, read from the kept start
    # Reading either body whole would have allocated 8 MiB at least; the cap keeps 16 KiB.
    assert peak_bytes < HUGE_BYTES // 4
    # The half-read 503 closed its connection instead of returning it to the pool.
    assert server.connections == 1 + 2


def _problem_of(size_bytes: int) -> bytes:
    # A problem document of exactly size_bytes, its detail last: cut anywhere, it is no JSON.
    start, end = b'{"title": "Forbidden", "padding": "', b'", "detail": "read to the end"}'
    return start + b"p" * (size_bytes - len(start) - len(end)) + end


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("size_bytes", "expected"),
    [
        pytest.param(_PROBLEM_MAX_BYTES, "403 Forbidden: read to the end", id="largest-problem"),
        pytest.param(_PROBLEM_MAX_BYTES + 1, '403: {"title": "Forbidden", "pad', id="one-more"),
    ],
)
def test_the_cap_keeps_all_that_classification_reads(
    pki: SenderPki, fake_time: FakeTime, serve: Serve, *, kind: str, size_bytes: int, expected: str
) -> None:
    # The largest problem document the parser reads arrives in two TLS records, and each twin
    # must keep all of it to quote its detail; a byte more is quoted as a snippet instead.
    body = _problem_of(size_bytes)
    server = serve([Status(403, {"Content-Type": PROBLEM_CONTENT_TYPE}, body)])
    with pytest.raises(StatusError) as caught:
        deliver(kind, exact_kwargs(pki, fake_time), server.url(), b"{}")
    assert str(caught.value).startswith(f"receiver answered {expected}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "policy",
    [
        pytest.param({"attempt_timeout_s": 2.0, "deadline_s": 300.0}, id="attempt-timeout"),
        pytest.param({"attempt_timeout_s": 15.0, "deadline_s": 3.0}, id="deadline"),
    ],
)
def test_trickling_answer_stops_within_the_budget(
    kind: str,
    policy: dict[str, float],
    pki: SenderPki,
    fake_time: FakeTime,
    serve: Serve,
) -> None:
    budget_s = min(policy.values())  # the first try's: the whole deadline is left
    # A byte per (fake) second for a minute: each read is quick, the answer is not.
    server = serve([Trickle(200, size=60, before_byte=lambda: fake_time.advance(1.0))])
    readings: list[float] = []

    def monotonic() -> float:
        readings.append(fake_time.monotonic())
        return readings[-1]

    kwargs = exact_kwargs(pki, fake_time, **policy, stop=stop_after_attempt(1))
    with pytest.raises(RetriesExhaustedError, match="TimeoutError: no answer in time") as caught:
        deliver(kind, {**kwargs, "monotonic": monotonic}, server.url(), b"{}")

    assert caught.value.result is not None
    (attempt,) = caught.value.result.attempts
    assert (attempt.status_code, attempt.error) == (None, "TimeoutError")
    # The first reading past the budget ended the try: bytes that arrived together make it
    # later than the budget by a few seconds at most, the minute the answer takes never.
    ended_at = min(r for r in readings if r >= budget_s)
    assert ended_at <= budget_s + 5
