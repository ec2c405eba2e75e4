"""Forwarded refusals: every one counted, lines bounded per peer and reason, then summed."""

from __future__ import annotations

import logging

import pytest

from mtls_hooks.proxy._headers import ForwardedCertError
from mtls_hooks.serving._forwarded import ForwardedRefusalLog


def test_a_flood_is_logged_bounded_then_summarised(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mtls_hooks.tls")
    now = [1000.0]
    log = ForwardedRefusalLog(lines_per_window=3, window_s=60, clock=lambda: now[0])
    spoof = ForwardedCertError("spoofed", reason="untrusted-proxy", status=403)
    for _ in range(10):
        log.record(("203.0.113.7", 5000), spoof, "x-ssl-client-verify")
    log.record(("203.0.113.7", 5001), ForwardedCertError("bad", status=400), "nginx")
    log.record(("203.0.113.8", 5000), spoof, "client-cert")
    lines = [r.getMessage() for r in caplog.records]
    assert sum("peer=203.0.113.7:" in line and "untrusted-proxy" in line for line in lines) == 3
    assert sum("cert-verify-failed" in line for line in lines) == 1  # its own window
    assert sum("peer=203.0.113.8:" in line for line in lines) == 1  # another peer's
    assert log.counts == {"untrusted-proxy": 11, "cert-verify-failed": 1}
    log.flush()  # the window has not ended: nothing to sum yet
    assert "summary" not in caplog.text
    now[0] += 60
    log.flush()
    summaries = [r.getMessage() for r in caplog.records if "summary" in r.getMessage()]
    assert summaries == [
        "event=forwarded_refused_summary peer=203.0.113.7 reason=untrusted-proxy more=7 window_s=60"
    ]
    log.record(("203.0.113.7", 5000), spoof, "x-ssl-client-verify")  # a new window
    assert caplog.records[-1].getMessage().startswith("event=forwarded_refused peer=")


def test_tracked_windows_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mtls_hooks.tls")
    log = ForwardedRefusalLog(lines_per_window=1, max_keys=4)
    spoof = ForwardedCertError("spoofed", reason="untrusted-proxy", status=403)
    for index in range(50):
        log.record((f"198.51.100.{index}", 1), spoof, "client-cert")
        log.record((f"198.51.100.{index}", 2), spoof, "client-cert")
    assert len(log._windows) <= 4
    assert log.counts["untrusted-proxy"] == 100
    assert caplog.text.count("more=1 ") == 46  # every evicted window said what it held back
