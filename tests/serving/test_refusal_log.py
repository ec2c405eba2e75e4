"""Refused handshakes are all counted, and logged within a bound per peer and reason.

Unit tests drive :class:`RefusalLog` with an injected clock (no sleeping); the last test
floods a real server with refused handshakes and reads the process-wide hook's lines and
counts.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest

from mtls_hooks.core._tls import HandshakeRefusal
from mtls_hooks.serving._refusals import RefusalLog, log_refusal
from mtls_hooks.testing import running_server
from tests.serving.apps import app
from tests.serving.conftest import Cast, LogCollector, Pki

UNPINNED = HandshakeRefusal("unpinned", "no pin matched")
UNKNOWN_CA = HandshakeRefusal("cert-verify-failed", "unable to get local issuer certificate")
LISTENER = ("127.0.0.1", 8443)


class Clock:
    """Seconds that move only when told to."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def lines() -> Iterator[LogCollector]:
    with LogCollector("test.refusals") as collector:
        yield collector


def _log(clock: Clock, **kwargs: int) -> RefusalLog:
    return RefusalLog(clock=clock, logger=logging.getLogger("test.refusals"), **kwargs)


def _refuse(
    log: RefusalLog, n: int, host: str = "10.0.0.1", refusal: HandshakeRefusal = UNPINNED
) -> None:
    for port in range(40000, 40000 + n):
        log.record(refusal, peer=(host, port), listener=LISTENER)


def _full(lines: LogCollector) -> list[str]:
    return [line for line in lines.lines if line.startswith("event=handshake_refused ")]


def _summaries(lines: LogCollector) -> list[str]:
    return [line for line in lines.lines if line.startswith("event=handshake_refused_summary ")]


def test_first_lines_then_one_summary_per_window(clock: Clock, lines: LogCollector) -> None:
    log = _log(clock, lines_per_window=3, window_s=60)
    _refuse(log, 1000)
    full = _full(lines)
    assert len(full) == 3
    assert full[0].startswith("event=handshake_refused peer=10.0.0.1:40000 reason=unpinned ")
    assert _summaries(lines) == []  # the window is still open
    clock.now_s += 59.9
    log.flush()
    assert _summaries(lines) == []
    clock.now_s += 0.1
    log.flush()
    log.flush()  # one summary per window, however often flushed
    assert _summaries(lines) == [
        "event=handshake_refused_summary peer=10.0.0.1 reason=unpinned more=997 window_s=60 "
        'listener=127.0.0.1:8443 detail="997 more refusals from 10.0.0.1 in the last 60 s '
        '(unpinned)"'
    ]
    assert log.counts == {"unpinned": 1000}


def test_a_new_window_logs_again_and_summarises_the_last(clock: Clock, lines: LogCollector) -> None:
    log = _log(clock, lines_per_window=2, window_s=60)
    _refuse(log, 5)
    clock.now_s += 61
    _refuse(log, 4)  # the first of these closes the old window and opens a new one
    assert len(_full(lines)) == 4
    [summary] = _summaries(lines)
    assert " more=3 " in summary
    clock.now_s += 60
    log.flush()
    assert [" more=2 " in line for line in _summaries(lines)] == [False, True]
    assert log.counts == {"unpinned": 9}


def test_nothing_suppressed_means_no_summary(clock: Clock, lines: LogCollector) -> None:
    log = _log(clock, lines_per_window=3)
    _refuse(log, 3)
    clock.now_s += 3600
    log.flush()
    assert len(_full(lines)) == 3
    assert _summaries(lines) == []


def test_each_peer_and_reason_has_its_own_lines(clock: Clock, lines: LogCollector) -> None:
    log = _log(clock, lines_per_window=2)
    _refuse(log, 10, host="10.0.0.1")
    _refuse(log, 10, host="10.0.0.2")
    _refuse(log, 10, host="10.0.0.1", refusal=UNKNOWN_CA)
    full = _full(lines)
    assert len(full) == 6
    assert sum("peer=10.0.0.2:" in line for line in full) == 2
    assert sum("reason=cert-verify-failed" in line for line in full) == 2
    assert log.counts == {"unpinned": 20, "cert-verify-failed": 10}


def test_many_peers_share_one_bounded_key(clock: Clock, lines: LogCollector) -> None:
    log = _log(clock, lines_per_window=1, max_peers=4)
    for host in range(100):
        _refuse(log, 3, host=f"10.0.1.{host}")
    # Four peers have their own window; the 96 others share peer=* (one line, then counted).
    assert len(_full(lines)) == 4 + 1
    assert len(log._windows) == 4 + 1
    clock.now_s += 60
    log.flush()
    summaries = _summaries(lines)
    assert (
        sum(line.startswith("event=handshake_refused_summary peer=* ") for line in summaries) == 1
    )
    assert " more=287 " in next(line for line in summaries if "peer=* " in line)
    assert log.counts == {"unpinned": 300}
    assert log._windows == {}


def test_an_ended_window_frees_its_slot(clock: Clock, lines: LogCollector) -> None:
    log = _log(clock, lines_per_window=1, max_peers=2)
    _refuse(log, 1, host="10.0.0.1")
    _refuse(log, 1, host="10.0.0.2")
    clock.now_s += 60
    _refuse(log, 1, host="10.0.0.3")  # the ended windows are dropped: a slot of its own
    assert _full(lines)[-1].startswith("event=handshake_refused peer=10.0.0.3:")
    assert "peer=*" not in " ".join(lines.lines)


def test_a_flood_that_stops_is_still_summarised() -> None:
    # No later refusal closes the window: the loop's timer writes the summary when it ends.
    log = RefusalLog(lines_per_window=1, window_s=0.05, logger=logging.getLogger("test.refusals"))

    async def flood_then_wait(summarised: threading.Event) -> bool:
        _refuse(log, 4)
        return await asyncio.to_thread(summarised.wait, 10.0)

    with LogCollector("test.refusals", wake_on="event=handshake_refused_summary") as lines:
        assert asyncio.run(flood_then_wait(lines.matched))
    [summary] = _summaries(lines)
    assert " more=3 " in summary
    assert log._windows == {}


# --------------------------------------------------------------------------- a real flood


def _refused_handshake(port: int, context: ssl.SSLContext) -> None:
    """One handshake by an unpinned TLS 1.2 client, refused with access_denied."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        pytest.raises(ssl.SSLError, match="ALERT_ACCESS_DENIED"),
    ):
        context.wrap_socket(raw, server_hostname="localhost")


def test_a_flood_of_refusals_is_counted_and_summarised(
    pki: Pki, cast: Cast, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(log_refusal, "_clock", clock)  # the process-wide hook's window
    context = pki.context(cast.stranger)
    context.maximum_version = ssl.TLSVersion.TLSv1_2  # refused before the client's Finished
    before = log_refusal.counts.get("unpinned", 0)
    flood = 3 * log_refusal.lines_per_window
    with (
        LogCollector("mtls_hooks.tls") as lines,
        running_server(app, pki.config(cast.alpha)) as server,
    ):
        for _ in range(flood):
            _refused_handshake(server.port, context)
        assert log_refusal.counts["unpinned"] - before == flood
        listener = f"listener=127.0.0.1:{server.port} "
        clock.now_s += log_refusal.window_s
        log_refusal.flush()
    full = [line for line in lines.lines if line.startswith("event=handshake_refused ")]
    assert len(full) == log_refusal.lines_per_window
    assert all(' reason=unpinned subject="CN=stranger" ' in line for line in full)
    [summary] = [line for line in lines.lines if listener in line]
    assert summary.startswith(
        f"event=handshake_refused_summary peer=127.0.0.1 reason=unpinned more={flood - len(full)} "
    )
