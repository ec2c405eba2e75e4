"""Handshakes that send nothing leave no memory behind (issue 9 §3: a TLS health check).

Runs ``bench/bench_handshake_memory.py``'s cases with 300 connections each against a real
``mtls-hooks`` server process, and reads that process's RSS from ``/proc``: after 300 such
connections it must stay within 10 MiB of where it was after 30. Before the fix, a pinned
client that completed the handshake and closed left its connection (and asyncio's 256 KiB
TLS read buffer) alive for the whole keep-alive timeout: ~80 MB for 300 of them. A refused
one waited in a reference cycle for the garbage collector: ~13 MB. The bound is a memory
figure, not a time: the suite's load does not move it.
"""

from __future__ import annotations

import pytest

from bench.bench_handshake_memory import CaseResult, measure

BOUND_KIB = 10 * 1024
HANDSHAKES = 300


@pytest.fixture(scope="module")
def results() -> dict[str, CaseResult]:
    return {result.name: result for result in measure(HANDSHAKES, quick=True)}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "outcome"),
    [
        pytest.param("ours pinned, no request", "completed", id="pinned-health-check"),
        pytest.param("ours pinned, one request", "answered", id="pinned-one-request"),
        pytest.param("ours unpinned, refused", "completed", id="unpinned-refused"),
    ],
)
def test_rss_after_n_connections_stays_near_rss_after_a_tenth(
    results: dict[str, CaseResult], case: str, outcome: str
) -> None:
    result = results[case]
    # The clients did what the case says (TLS 1.3: a refused client completes its side).
    assert getattr(result.burst, outcome) == HANDSHAKES, result.burst
    assert result.held_all == 0, "the server still holds sockets of clients that left"
    assert result.growth_kib <= BOUND_KIB, (
        f"RSS grew {result.growth_kib} KiB from {HANDSHAKES // 10} to {HANDSHAKES} "
        f"connections ({result.kib_per_handshake:.1f} KiB each)"
    )
