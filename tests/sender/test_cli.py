"""``mtls-hooks send``: prints the result and attempts, or one line and a non-zero status."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from mtls_hooks.cli._main import main
from mtls_hooks.core._keys_signing import Ed25519SigningKey
from tests.sender.conftest import PASSPHRASE, SECRET, SenderPki
from tests.sender.scripted import ScriptedServer, Status

Serve = Callable[..., ScriptedServer]


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    monkeypatch.delenv("MTLS_HOOKS_SECRET", raising=False)


def _tls(pki: SenderPki) -> list[str]:
    return ["--cert", str(pki.path("client.pem")), "--key", str(pki.path("client.key")),
            "--ca", str(pki.ca_file), "--secret-env", "WEBHOOK_SECRET"]  # fmt: skip


def test_success_prints_result_and_attempts(
    pki: SenderPki, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    # Retry-After: 0 makes the retry immediate, so the test never sleeps.
    server = serve([Status(503, {"Retry-After": "0"}), Status(200)])
    argv = ["send", server.url(), *_tls(pki), "--pin", pki.server_pin, "--type", "invoice.paid",
            "--data", '{"id": "inv_1"}', "--id", "msg_cli1"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"delivered msg_cli1 to {server.url()}: 200 after 2 attempt(s)")
    assert out[1].startswith("  #1 503 in ")
    assert out[1].endswith("then waited 0.00 s (retry-after)")
    assert out[2].startswith("  #2 200 in ")
    message = Webhook(SECRET).verify(server.requests[-1].body, server.requests[-1].headers)
    assert message["type"] == "invoice.paid"
    assert message["data"] == {"id": "inv_1"}


def test_data_file_is_sent_byte_for_byte(
    pki: SenderPki, serve: Serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve([])
    document = tmp_path / "event.json"
    document.write_text('{ "spaced" :  [1, 2] }\n', encoding="utf-8")
    p12 = ["--pkcs12", str(pki.path("client.p12")), "--key-password-file", str(tmp_path / "pw")]
    (tmp_path / "pw").write_bytes(PASSPHRASE + b"\n")
    argv = ["send", server.url(), *p12, "--ca", str(pki.ca_file), "--secret-env",
            "WEBHOOK_SECRET", "--data", f"@{document}"]  # fmt: skip
    assert main(argv) == 0
    assert server.requests[0].body == document.read_bytes()
    assert "delivered" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("script", "extra", "expected"),
    [
        pytest.param([Status(410)], [], "endpoint gone (410)", id="gone"),
        pytest.param(
            [Status(503, {"Retry-After": "0"})] * 2,
            ["--max-attempts", "2"],
            "gave up after 2 attempt(s) (attempt limit): receiver answered 503",
            id="exhausted",
        ),
        pytest.param([], ["--pin", "sha256/" + "A" * 43 + "="], "not in pins", id="unpinned"),
    ],
)
def test_failure_exits_non_zero_with_one_line(
    pki: SenderPki,
    serve: Serve,
    capsys: pytest.CaptureFixture[str],
    *,
    script: list[Status],
    extra: list[str],
    expected: str,
) -> None:
    server = serve(script)
    assert main(["send", server.url(), *_tls(pki), *extra]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("mtls-hooks: error: ")
    assert expected in lines[0]


@pytest.mark.parametrize(
    ("argv_tail", "expected"),
    [
        pytest.param(["--data", "{nope"], "--data is not JSON", id="bad-json"),
        pytest.param(["--secret-env", "UNSET_VAR_X"], "UNSET_VAR_X is not set", id="no-secret"),
        pytest.param(["--pkcs12", "c.p12"], "not both", id="pem-and-pkcs12"),
        pytest.param(["--data", "@/nonexistent.json"], "cannot read", id="no-data-file"),
        pytest.param(["--key-password-env", "UNSET_PW_X"], "UNSET_PW_X is not set", id="no-pw"),
        pytest.param(["--secret-file", "/nonexistent"], "cannot read", id="no-secret-file"),
        pytest.param(["--secret", "whsec_short"], "whsec_", id="bad-secret"),
    ],
)
def test_configuration_errors_are_one_line(
    pki: SenderPki, capsys: pytest.CaptureFixture[str], argv_tail: list[str], expected: str
) -> None:
    assert main(["send", "https://127.0.0.1:9/h", *_tls(pki), *argv_tail]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert expected in err


def test_secret_never_printed(
    pki: SenderPki, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve([Status(400, body=b"no")])
    assert main(["send", server.url(), *_tls(pki), "--data", json.dumps({"a": 1})]) == 1
    captured = capsys.readouterr()
    # The error line was printed (so there was text that could have leaked), without it.
    assert "receiver answered 400: no" in captured.err
    assert len(server.requests) == 1
    for secret in (SECRET, SECRET.removeprefix("whsec_")):
        assert secret not in captured.out + captured.err


def test_rotation_keys_from_a_file_and_the_default_variable(
    pki: SenderPki, serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve([])
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{SECRET}\n{Ed25519SigningKey.generate().export()}\n", encoding="utf-8")
    tls = ["--cert", str(pki.path("client.pem")), "--key", str(pki.path("client.key")),
           "--ca", str(pki.ca_file)]  # fmt: skip
    assert main(["send", server.url(), *tls, "--secret-file", str(keys)]) == 0
    versions = [e.split(",")[0] for e in server.requests[0].headers["webhook-signature"].split()]
    assert versions == ["v1", "v1a"]
    monkeypatch.setenv("MTLS_HOOKS_SECRET", SECRET)
    assert main(["send", server.url(), *tls]) == 0
    assert Webhook(SECRET).verify(server.requests[1].body, server.requests[1].headers) == {}
