"""examples/monitoring: the alert rules pass promtool, and every metric they name exists."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from mtls_hooks.metrics._registry import Metrics
from tests.peers import need_binary

MONITORING = Path(__file__).resolve().parent.parent / "examples" / "monitoring"


def exported_names() -> set[str]:
    """Every sample name a fully populated metric set exports."""
    metrics = Metrics()
    metrics.handshake("ok")
    metrics.webhook(endpoint="e", outcome="handled", reason="none", method="POST", status=204,
                    seconds=0.1)  # fmt: skip
    metrics.attempt(endpoint="e", outcome="delivered", status_code=200, seconds=0.1)
    metrics.delivery(endpoint="e", outcome="delivered")
    metrics.queue_messages.child("outbox", "failed").set(1)
    metrics.queue_oldest_due_age.child("outbox").set(1)
    metrics.certificate_expiry.child("server", "s").set(1)
    metrics.crl_next_update.child("ca").set(1)
    text = generate_latest(metrics.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


def referenced(text: str) -> set[str]:
    return set(re.findall(r"\b(?:mtls_hooks_[a-z_]+|http_server_[a-z_]+)\b", text))


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = need_binary("promtool")
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run([promtool, *args], cwd=MONITORING, capture_output=True,
                              text=True, timeout=60, check=False)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout


@pytest.mark.parametrize("name", ["alerts.yml", "grafana-dashboard.json"])
def test_every_metric_named_is_exported(name: str) -> None:
    named = referenced((MONITORING / name).read_text("utf-8"))
    assert named  # the file does watch our metrics
    assert named <= exported_names()


def test_dashboard_is_valid_grafana_json() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text("utf-8"))
    assert dashboard["uid"] == "mtls-hooks"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"]
        for target in panel["targets"]:
            assert referenced(target["expr"]), target["expr"]
