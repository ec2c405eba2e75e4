"""Expiry alarms: a warning inside 30 days, an error inside 7 or past, gauges set, never a crash."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from certs_tool import CA
from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.metrics._expiry import (
    DAY_S,
    Expiry,
    ExpiryAlarm,
    certificate_expiries,
    crl_expiry,
    server_expiries,
)
from mtls_hooks.metrics._registry import Metrics, disable_metrics, enable_metrics

NOW = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    disable_metrics()
    yield enable_metrics()
    disable_metrics()


def at(days: float) -> float:
    return (NOW + dt.timedelta(days=days)).timestamp()


def alarm(*days_left: float) -> ExpiryAlarm:
    dates = [Expiry("certificate", "server", f"cert-{d}", at(d)) for d in days_left]
    return ExpiryAlarm(lambda: dates, clock=NOW.timestamp)


@pytest.mark.parametrize(
    ("days_left", "level"),
    [
        pytest.param(31, None, id="31-days-quiet"),
        pytest.param(30.01, None, id="just-outside-the-warning-window"),
        pytest.param(30, logging.WARNING, id="30-days-warning"),
        pytest.param(7.01, logging.WARNING, id="just-outside-the-error-window"),
        pytest.param(7, logging.ERROR, id="7-days-error"),
        pytest.param(0.5, logging.ERROR, id="hours-error"),
        pytest.param(-1, logging.ERROR, id="expired-error"),
    ],
)
def test_window_boundaries(
    days_left: float, level: int | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mtls_hooks.expiry")
    logged = alarm(days_left).check()
    assert [lvl for lvl, _ in logged] == ([] if level is None else [level])
    assert [r.levelno for r in caplog.records] == ([] if level is None else [level])


def test_log_line_names_the_certificate_and_the_date(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mtls_hooks.expiry")
    alarm(-2, 3).check()
    expired, expiring = (r.getMessage() for r in caplog.records)
    assert expired.startswith('event=certificate_expired role=server name="cert--2" at=2026-12-04')
    assert "days_left=-2.0" in expired
    assert expiring.startswith('event=certificate_expiring role=server name="cert-3"')


def test_windows_are_configurable_and_checked() -> None:
    dates = [Expiry("certificate", "server", "x", at(45))]
    wide = ExpiryAlarm(lambda: dates, warn_within_s=60 * DAY_S, clock=NOW.timestamp)
    assert [lvl for lvl, _ in wide.check()] == [logging.WARNING]
    with pytest.raises(ConfigurationError, match="error window <= warning window"):
        ExpiryAlarm(lambda: dates, warn_within_s=5 * DAY_S, error_within_s=7 * DAY_S)


def test_real_files_set_the_gauges(metrics: Metrics, tmp_path: Path) -> None:
    ca = CA(name="Partner CA", not_after=NOW + dt.timedelta(days=400))
    server = ca.issue_server("hooks.example", not_after=NOW + dt.timedelta(days=20))
    server.cert_pem.write_to_path(tmp_path / "server.pem")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    ca.crl_pem(next_update=dt.timedelta(days=3)).write_to_path(tmp_path / "crl.pem")
    source = server_expiries(str(tmp_path / "server.pem"), [str(tmp_path / "ca.pem")],
                             [str(tmp_path / "crl.pem")])  # fmt: skip
    logged = ExpiryAlarm(source, clock=NOW.timestamp).check()
    levels = {(e.role, e.name): lvl for lvl, e in logged}
    assert levels[("server", "hooks.example")] == logging.WARNING
    assert ("client_ca", "Partner CA") not in levels  # 400 days: quiet
    registry = metrics.registry
    server_expiry = registry.get_sample_value(
        "mtls_hooks_certificate_expiry_timestamp_seconds",
        {"role": "server", "name": "hooks.example"},
    )
    assert server_expiry == pytest.approx(at(20), abs=1)
    ca_expiry = registry.get_sample_value(
        "mtls_hooks_certificate_expiry_timestamp_seconds",
        {"role": "client_ca", "name": "Partner CA"},
    )
    assert ca_expiry == pytest.approx(at(400), abs=1)
    next_update = registry.get_sample_value(
        "mtls_hooks_crl_next_update_timestamp_seconds", {"issuer": "Partner CA"}
    )
    assert next_update is not None
    assert next_update > NOW.timestamp()


def test_bundle_and_leaf_only(tmp_path: Path) -> None:
    ca = CA(name="Root")
    leaf = ca.issue_server("leaf.example")
    chain = tmp_path / "chain.pem"
    chain.write_bytes(leaf.cert_pem.bytes() + ca.cert_pem.bytes())
    assert [e.name for e in certificate_expiries("server", chain, leaf_only=True)] == [
        "leaf.example"
    ]
    assert [e.name for e in certificate_expiries("client_ca", chain)] == ["leaf.example", "Root"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(None, "cannot read", id="missing"),
        pytest.param(b"junk", "no readable PEM certificate", id="junk"),
    ],
)
def test_unreadable_certificate(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "cert.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigurationError, match=message):
        certificate_expiries("server", path)


def test_unreadable_crl(tmp_path: Path) -> None:
    path = tmp_path / "crl.der"
    path.write_bytes(b"\x30\x03junk")
    with pytest.raises(ConfigurationError, match="not a readable CRL"):
        crl_expiry(path)


def test_der_crl(tmp_path: Path) -> None:
    ca = CA(name="DER CA")
    path = tmp_path / "crl.der"
    from cryptography.hazmat.primitives.serialization import Encoding

    path.write_bytes(ca.crl(next_update=dt.timedelta(days=1)).public_bytes(Encoding.DER))
    assert crl_expiry(path).name == "DER CA"


def test_run_checks_now_then_daily_and_survives_a_bad_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mtls_hooks.expiry")
    calls: list[int] = []
    waits: list[float] = []

    def source() -> list[Expiry]:
        calls.append(1)
        if len(calls) == 2:  # a file being rotated during the second check
            raise ConfigurationError("cannot read server.pem")
        return [Expiry("certificate", "server", "s", at(1))]

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(ExpiryAlarm(source, clock=NOW.timestamp).run(sleep=sleep))
    assert len(calls) == 3
    assert waits == [DAY_S, DAY_S, DAY_S]
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("event=certificate_expiring") for m in messages) == 2
    assert "event=expiry_check_failed detail=cannot read server.pem" in messages
