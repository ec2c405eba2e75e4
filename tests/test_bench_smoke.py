"""The benchmarks run end to end in their tiny ``--quick`` mode.

These prove the bench works (servers start, the generator completes requests, the table
prints); they never assert on speed: performance is measured by ``make bench``, not by a
timed test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench._servers import SIGNING_SECRET, BenchPki, make_pki
from bench.loadgen import KEEP_ALIVE, NEW_HANDSHAKE, LoadSpec, json_body, parse_response, run_load
from bench.run_all import discover, format_table
from tests.nginx import NginxServer, nginx_available, run_nginx

ROOT = Path(__file__).resolve().parent.parent
# A bound on a hung run, not a speed check.
_HANG_TIMEOUT_S = 240


@pytest.fixture
def _need_nginx() -> None:
    if not nginx_available():
        if os.environ.get("CI"):
            pytest.fail("nginx is missing in CI: .ci/install-peers should have installed it")
        pytest.skip("nginx is not installed (run .ci/install-peers)")


@pytest.mark.slow
@pytest.mark.nginx
@pytest.mark.usefixtures("_need_nginx")
def test_run_all_quick_prints_one_table() -> None:
    # A subprocess: the benchmarks pin their process to a core and start a forkserver.
    done = subprocess.run(
        [sys.executable, "-m", "bench.run_all", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=_HANG_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = done.stdout.split("mtls-hooks benchmarks", 1)[1]
    for case in (
        "nginx keep-alive",
        "baseline keep-alive",
        "baseline handshake",
        "ours keep-alive",
        "ours latency p50, 1 conn",
        "ours handshake",
        "ours+verify keep-alive",
        "ours+verify[sqlite] keep-alive",
        "dedupe store sqlite",
        "Quart+verify, in-process ASGI",
        "verification CPU / baseline server CPU per req",
        "ours / baseline, keep-alive req/s",
        "ours+verify / ours, req/s",
        "generator CPU, worst",
    ):
        # The bench column is as wide as the longest bench name: match any padding.
        assert re.search(rf"^serving +{re.escape(case)}", table, re.MULTILINE), case
    assert "failed: none" in table
    # Every serving scenario completed requests without transport errors.
    assert " errors, " not in table


@pytest.fixture(scope="module")
def bench_pki(tmp_path_factory: pytest.TempPathFactory) -> BenchPki:
    return make_pki(tmp_path_factory.mktemp("bench-pki"))


def _spec(pki: BenchPki, port: int, **overrides: object) -> LoadSpec:
    base = LoadSpec(
        port=port,
        ca_file=pki.ca,
        cert_file=pki.client_cert,
        key_file=pki.client_key,
        processes=1,
        connections=2,
        max_requests=120,
        duration_s=60,  # a bound for a hung run; the request count ends these runs
        warmup_requests=1,
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def _nginx(
    workdir: Path, pki: BenchPki, *, keepalive_requests: int = 10_000_000
) -> contextlib.AbstractContextManager[NginxServer]:
    return run_nginx(
        workdir,
        cert=Path(pki.server_cert),
        key=Path(pki.server_key),
        client_ca=Path(pki.ca),
        keepalive_requests=keepalive_requests,
    )


@pytest.mark.nginx
@pytest.mark.usefixtures("_need_nginx")
def test_keep_alive_reconnects_when_the_server_closes(tmp_path: Path, bench_pki: BenchPki) -> None:
    with _nginx(tmp_path / "nginx", bench_pki, keepalive_requests=10) as nginx:
        result = run_load(_spec(bench_pki, nginx.port, signing_secret=SIGNING_SECRET))
        entries = nginx.wait_for_entries(120 + 2)
    assert (result.completed, result.ok, result.errors) == (120, 120, 0)
    assert result.statuses == {200: 120}
    assert not result.timed_out
    # nginx ends each connection after 10 requests: about 12 reopened by the generator.
    assert result.reconnects >= 10
    timed = entries[2:]  # after the warm-up request of each connection
    assert all(entry["content_length"] == "1024" for entry in timed)
    assert all(entry["ssl_client_s_dn"] == "CN=bench" for entry in timed)
    ids = [entry["webhook_id"] for entry in entries]
    assert len(set(ids)) == len(ids), "every request carries its own webhook-id"
    assert all(entry["webhook_signature"].startswith("v1,") for entry in entries)


@pytest.mark.nginx
@pytest.mark.usefixtures("_need_nginx")
def test_handshake_mode_opens_one_connection_per_request(
    tmp_path: Path, bench_pki: BenchPki
) -> None:
    with _nginx(tmp_path / "nginx", bench_pki) as nginx:
        result = run_load(_spec(bench_pki, nginx.port, mode=NEW_HANDSHAKE, max_requests=30))
        entries = nginx.wait_for_entries(30)
    assert (result.completed, result.ok, result.errors) == (30, 30, 0)
    assert len({entry["connection"] for entry in entries}) == 30
    assert {entry["connection_requests"] for entry in entries} == {"1"}
    assert result.p50_ms > 0
    assert result.p99_ms >= result.p50_ms


@pytest.mark.nginx
@pytest.mark.usefixtures("_need_nginx")
def test_a_refused_client_counts_errors_and_stops(tmp_path: Path, bench_pki: BenchPki) -> None:
    stranger = make_pki(tmp_path / "other")  # a client from another CA: nginx answers 400
    with _nginx(tmp_path / "nginx", bench_pki) as nginx:
        spec = _spec(
            bench_pki,
            nginx.port,
            cert_file=stranger.client_cert,
            key_file=stranger.client_key,
            max_requests=20,
        )
        result = run_load(spec)
    assert result.mode == KEEP_ALIVE
    assert result.statuses == {400: 20}
    assert result.ok == 0


def test_every_bench_module_is_discovered() -> None:
    assert {"bench.bench_serving", "bench.bench_sender"} <= set(discover())


def test_table_layout() -> None:
    table = format_table(
        [
            {
                "bench": "b",
                "case": "a / b",
                "value": 0.95,
                "unit": "ratio",
                "target": ">= 0.9",
                "ok": True,
            },
            {"bench": "b", "case": "x", "value": 12, "unit": "req/s", "note": "p50 1 ms"},
        ]
    )
    header, _rule, first, second = table.splitlines()
    assert header.split() == ["bench", "case", "value", "unit", "target", "verdict", "note"]
    assert first.split()[-1] == "ok"
    assert second.endswith("p50 1 ms")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", (200, 0, False), id="length"
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\no", None, id="short-body"),
        pytest.param(
            b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n", (204, 0, True), id="204-close"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            (200, 0, False),
            id="chunked",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n",
            None,
            id="chunked-short",
        ),
        pytest.param(b"HTTP/1.0 200 OK\r\n\r\nbody", (200, -1, True), id="until-eof"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-", None, id="partial-head"),
    ],
)
def test_parse_response(raw: bytes, expected: tuple[int, int, bool] | None) -> None:
    # An expected end of 0 stands for "the whole of raw".
    if expected is not None and expected[1] == 0:
        expected = (expected[0], len(raw), expected[2])
    assert parse_response(raw) == expected


def test_parse_response_refuses_junk() -> None:
    with pytest.raises(ValueError, match="status line"):
        parse_response(b"SSH-2.0-OpenSSH\r\n\r\n")


def test_json_body_is_exact_json() -> None:
    import json

    body = json_body(1024)
    assert len(body) == 1024
    assert json.loads(body)["type"] == "invoice.paid"
    with pytest.raises(ValueError, match="skeleton"):
        json_body(10)
