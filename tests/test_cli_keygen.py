"""``mtls-hooks keygen``: a whsec_ secret printed, or an Ed25519 pair split between file and
stdout; the secret file is created 0600 and never overwritten unasked."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mtls_hooks.cli._main import main
from mtls_hooks.core._signing import (
    Ed25519SigningKey,
    Ed25519VerifyKey,
    HmacSecret,
    Signer,
    Verifier,
)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_prints_a_new_hmac_secret(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(["keygen"], capsys)
    assert (code, err) == (0, "")
    secret = HmacSecret.parse(out.strip())
    assert out == secret.export() + "\n"
    code, again, _ = _run(["keygen"], capsys)
    assert again != out  # random, not derived


def test_hmac_secret_to_a_file_prints_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "whsec.txt"
    assert _run(["keygen", "--out", str(target)], capsys) == (0, "", "")
    HmacSecret.parse(target.read_text().strip())
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_ed25519_writes_the_signing_key_and_prints_the_public_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "sender.whsk"
    code, out, err = _run(["keygen", "--ed25519", "--out", str(target)], capsys)
    assert (code, err) == (0, "")
    assert out.startswith("whpk_")
    assert "whsk_" not in out
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    signing_key = Ed25519SigningKey.parse(target.read_text().strip())
    public_key = Ed25519VerifyKey.parse(out.strip())
    assert signing_key.public_key == public_key
    # The halves work together: what the file's key signs, the printed key verifies.
    headers = Signer([signing_key]).sign(b"{}", webhook_id="msg_keygen")
    assert Verifier([public_key]).verify(headers.as_dict(), b"{}").webhook_id == "msg_keygen"


def test_an_existing_file_is_kept_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "sender.whsk"
    target.write_text("keep me\n")
    target.chmod(0o644)
    code, out, err = _run(["keygen", "--ed25519", "--out", str(target)], capsys)
    assert (code, out) == (1, "")
    assert err == f"mtls-hooks: error: {target} exists; give --force to replace it\n"
    assert target.read_text() == "keep me\n"

    code, out, _ = _run(["keygen", "--ed25519", "--out", str(target), "--force"], capsys)
    assert code == 0
    assert Ed25519SigningKey.parse(target.read_text().strip()).public_key.export() == out.strip()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # not the old file's 0644
    assert [p.name for p in tmp_path.iterdir()] == ["sender.whsk"]  # no temporary left


def test_a_symlink_is_never_followed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    link = tmp_path / "link"
    link.symlink_to(victim)
    code, _, err = _run(["keygen", "--out", str(link)], capsys)
    assert code == 1
    assert "exists; give --force" in err
    assert victim.read_text() == "untouched\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["keygen", "--ed25519"], "--ed25519 needs --out FILE", id="ed25519-no-out"),
        pytest.param(["keygen", "--force"], "--force only applies to --out", id="force-no-out"),
        pytest.param(
            ["keygen", "--out", "/nonexistent-dir/key"], "cannot write /nonexistent-dir/key: ",
            id="unwritable",
        ),
    ],
)  # fmt: skip
def test_errors_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(argv, capsys)
    assert (code, out) == (1, "")
    assert err.startswith(f"mtls-hooks: error: {message}")
    assert err.count("\n") == 1


def test_console_script() -> None:
    script = Path(sys.executable).with_name("mtls-hooks")
    assert script.exists(), "the package is installed with its console scripts"
    done = subprocess.run(
        [str(script), "keygen"], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    assert HmacSecret.parse(done.stdout.strip()).export() == done.stdout.strip()
