"""A hostile receiver holds a caller no longer than the try's budget: the attempt timeout,
capped by what is left of the delivery's deadline, bounds the whole try in both twins:
connecting, sending, the status line and headers, and the body.

The hardening finding behind these tests: a receiver dripping its status line and headers a
byte at a time held the sync sender for 123.8 s against ``deadline_s=8``, because httpx bounds
each read and no read was slow. The fake-clock tests drive the sender's monotonic clock from
the server (a byte costs a fake second), so they never wait for the budget in real time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from tenacity import stop_after_attempt

from mtls_hooks.core._errors import RetriesExhaustedError
from tests.sender.conftest import FakeTime, SenderPki, deliver, exact_kwargs
from tests.sender.scripted import Drip, ScriptedServer

Serve = Callable[..., ScriptedServer]

BUDGETS = [
    pytest.param({"attempt_timeout_s": 3.0, "deadline_s": 300.0}, id="attempt-timeout"),
    pytest.param({"attempt_timeout_s": 15.0, "deadline_s": 3.0}, id="deadline"),
]


def _recording(fake_time: FakeTime, readings: list[float]) -> Callable[[], float]:
    def monotonic() -> float:
        readings.append(fake_time.monotonic())
        return readings[-1]

    return monotonic


@pytest.mark.parametrize("policy", BUDGETS)
def test_sync_dripped_head_ends_at_the_budget(
    policy: dict[str, float], pki: SenderPki, fake_time: FakeTime, serve: Serve
) -> None:
    budget_s = min(policy.values())  # the first try's: the whole deadline is left
    # 200 header bytes, each a fake second apart: quick reads, an answer of 200 s. Complete,
    # it is a 200: a sender that waits for it all succeeds, and this test fails.
    drip = Drip(head_bytes=200, interval_s=0.02, before_byte=lambda: fake_time.advance(1.0))
    server = serve([drip])
    readings: list[float] = []
    kwargs = exact_kwargs(pki, fake_time, **policy, stop=stop_after_attempt(1))
    kwargs["monotonic"] = _recording(fake_time, readings)
    with pytest.raises(RetriesExhaustedError, match="TimeoutError: no answer in time") as caught:
        deliver("sync", kwargs, server.url(), b"{}")

    assert caught.value.result is not None
    (attempt,) = caught.value.result.attempts
    assert (attempt.status_code, attempt.error) == (None, "TimeoutError")
    # The first reading past the budget ended the try. The bytes that reach a busy sender
    # between two of its reads arrive together and make that reading a few fake seconds
    # late (a few times 20 ms); waiting for the whole head would make it 200 s late.
    slack_s = 10
    assert min(r for r in readings if r >= budget_s) <= budget_s + slack_s
    assert attempt.latency_s <= budget_s + slack_s  # on the sender's clock
    server.stop()  # join the connection thread before reading what it recorded
    (dripped,) = server.drips
    assert dripped.sent_bytes < budget_s + 2 * slack_s < dripped.total_bytes


def test_sync_read_waits_no_longer_than_what_is_left(
    pki: SenderPki, fake_time: FakeTime, serve: Serve
) -> None:
    # The first header byte costs 29.7 of the 30 s budget, then the receiver holds the
    # connection for 20 s (real) and closes it. A read that blocked for the whole 30 s
    # attempt timeout would see that close, a transport error; blocking at most what is
    # left (0.3 s) ends the try with the socket's own timeout long before.
    drip = Drip(head_bytes=200, interval_s=20.0, hang_up_after=1,
                before_byte=lambda: fake_time.advance(29.7))  # fmt: skip
    server = serve([drip])
    kwargs = exact_kwargs(pki, fake_time, attempt_timeout_s=30.0, stop=stop_after_attempt(1))
    with pytest.raises(RetriesExhaustedError, match="no answer in time") as caught:
        deliver("sync", kwargs, server.url(), b"{}")

    assert caught.value.result is not None
    (attempt,) = caught.value.result.attempts
    assert attempt.error == "ReadTimeout"  # the socket's timeout, not the check between reads
    server.stop()
    (dripped,) = server.drips
    assert dripped.sent_bytes == 1


PATHS = [
    pytest.param("sync", {}, id="sync"),
    pytest.param("async", {}, id="async-aiohttp"),
    # http2=True takes httpx in the async twin (HTTP/1.1 here: the server offers no h2).
    pytest.param("async", {"http2": True}, id="async-httpx"),
]


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param({"attempt_timeout_s": 0.5, "deadline_s": 300.0}, id="attempt-timeout"),
        pytest.param({"attempt_timeout_s": 3.0, "deadline_s": 0.5}, id="deadline"),
    ],
)
@pytest.mark.parametrize(("kind", "extra"), PATHS)
def test_a_dripping_receiver_never_holds_a_caller(
    pki: SenderPki,
    *,
    kind: str,
    extra: dict[str, Any],
    policy: dict[str, float],
    fake_time: FakeTime,
    serve: Serve,
) -> None:
    # In real time, the sender's own clocks: the async twin bounds a try on the event loop's
    # clock (aiohttp's total timeout, asyncio.timeout over httpx), which no fake clock moves,
    # and the sync twin's sockets time out in real seconds. The receiver would hold the
    # caller for 60 s (600 header bytes, 0.1 s apart); the budget is 0.5 s. What the test
    # reads is the receiver's progress when the caller was back, not a stopwatch: fewer than
    # 100 bytes is back within 10 s, a slack so wide that no load on a shared machine reaches
    # it, while a sender waiting for the whole head takes the full minute and gets a 200.
    server = serve([Drip(head_bytes=600, interval_s=0.1)])
    kwargs = {**exact_kwargs(pki, fake_time, **policy), "monotonic": time.monotonic, **extra}
    if policy["deadline_s"] > 1:
        kwargs["retry"] = kwargs["retry"].replace(stop=stop_after_attempt(1))
        why = "attempt limit"
    else:
        why = "deadline of 0.5 s"  # no time left for another try
    with pytest.raises(RetriesExhaustedError, match="no answer in time") as caught:
        deliver(kind, kwargs, server.url(), b"{}")
    assert str(caught.value).startswith(f"gave up after 1 attempt(s) ({why}): ")
    server.stop()
    (dripped,) = server.drips
    assert dripped.sent_bytes < 100

    assert caught.value.result is not None
    (attempt,) = caught.value.result.attempts
    assert attempt.status_code is None
    assert attempt.error is not None
    assert "Timeout" in attempt.error
    assert fake_time.sleeps == []
