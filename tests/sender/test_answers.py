"""Answers a third-party receiver controls: their size is capped, both twins alike."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import pytest

from mtls_hooks._outcomes import ANSWER_KEEP_BYTES
from tests.sender.conftest import KINDS, FakeTime, SenderPki, deliver, exact_kwargs
from tests.sender.scripted import ScriptedServer, Status

Serve = Callable[..., ScriptedServer]

HUGE_BYTES = 8 * 1024 * 1024


@pytest.mark.parametrize("kind", KINDS)
def test_huge_answers_are_capped_and_their_connections_dropped(
    kind: str, pki: SenderPki, fake_time: FakeTime, serve: Serve
) -> None:
    body = b"x" * HUGE_BYTES
    server = serve([Status(503, body=body), Status(200, body=body)])
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
    assert server.connections == 2


def test_the_cap_covers_what_classification_reads() -> None:
    assert ANSWER_KEEP_BYTES >= 16 * 1024
