"""``certs-tool``: each subcommand end to end, and every error as one line and a non-zero exit."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from certs_tool import CA, IssuedCert
from certs_tool._cli import main

from .test_openssl import _openssl_pin, openssl

TIMEOUT_S = 30


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse usage errors and --help
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_quickstart_console_script_then_openssl(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("certs-tool")
    command = [str(script)] if script.exists() else [shutil.which("certs-tool") or "certs-tool"]
    target = tmp_path / "pki"
    done = subprocess.run(
        [*command, "quickstart", str(target)], capture_output=True, timeout=TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stderr
    for name in ("server.pem", "client.pem"):
        result = openssl("verify", "-CAfile", str(target / "ca.pem"), str(target / name))
        assert result.returncode == 0, result.stdout + result.stderr
    for name in ("ca-key.pem", "server-key.pem", "client-key.pem"):
        assert stat.S_IMODE((target / name).stat().st_mode) == 0o600
    pin = subprocess.run(
        [*command, "pin", str(target / "client.pem")],
        capture_output=True,
        timeout=TIMEOUT_S,
        check=True,
    ).stdout.decode()
    assert pin.strip() == "sha256/" + _openssl_pin(target / "client.pem")
    assert pin.strip() in done.stdout.decode()
    again = subprocess.run(
        [*command, "quickstart", str(target)], capture_output=True, timeout=TIMEOUT_S, check=False
    )
    assert again.returncode == 1
    assert again.stdout == b""
    assert again.stderr.decode().count("\n") == 1
    assert b"already exists" in again.stderr


def test_lifecycle_with_encrypted_ca(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CA_PASS", "ca secret")
    (tmp_path / "key-pass").write_text("key secret\n")
    ca_opts = ["--ca", "ca", "--ca-passphrase-env", "CA_PASS"]
    code, out, err = run(capsys, "init", "ca", "--name", "Ops CA", "--passphrase-env", "CA_PASS")
    assert code == 0, err
    assert b"ENCRYPTED" in (tmp_path / "ca" / "ca-key.pem").read_bytes()
    code, out, err = run(capsys, "server", *ca_opts, "api.example", "10.0.0.1", "--out", "api")
    assert code == 0, err
    assert (tmp_path / "api.pem").exists()
    code, out, err = run(
        capsys, "client", *ca_opts, "billing", "--uri", "spiffe://example.org/billing",
        "--key-passphrase-file", "key-pass", "--days", "10",
    )  # fmt: skip
    assert code == 0, err
    pin = out.split("SPKI pin: ")[1].strip()
    assert b"ENCRYPTED" in (tmp_path / "billing-key.pem").read_bytes()

    code, out, err = run(capsys, "inspect", "billing.pem", "--json")
    assert code == 0, err
    [info] = json.loads(out)
    assert info["role"] == "client"
    assert info["sans"] == ["uri:spiffe://example.org/billing"]
    assert info["spki_pin"] == pin
    code, out, _ = run(capsys, "inspect", "billing.pem")
    assert "spiffe://example.org/billing" in out

    code, out, err = run(capsys, "renew", *ca_opts, "billing.pem", "--out", "billing-2.pem")
    assert code == 0, err
    assert pin in out
    code, out, _ = run(capsys, "pin", "billing-2.pem")
    assert out.strip() == pin
    code, out, _ = run(capsys, "pin", "--curl", "billing-key.pem", "--passphrase-file", "key-pass")
    assert out.strip() == pin.replace("sha256/", "sha256//", 1)

    code, out, err = run(
        capsys, "p12", "billing.pem", "billing-key.pem", "--out", "billing.p12",
        "--key-passphrase-file", "key-pass", "--passphrase-env", "CA_PASS",
    )  # fmt: skip
    assert code == 0, err
    info_p12 = openssl(
        "pkcs12", "-info", "-noout", "-in", "billing.p12", "-passin", "pass:ca secret"
    )
    assert info_p12.returncode == 0, info_p12.stderr

    code, out, err = run(capsys, "revoke", *ca_opts, "billing")
    assert code == 0, err
    assert out.count("revoked billing") == 2  # the original and its renewal
    code, out, err = run(capsys, "crl", *ca_opts, "--out", "crl.pem")
    assert code == 0, err
    crl = x509.load_pem_x509_crl((tmp_path / "crl.pem").read_bytes())
    assert len(list(crl)) == 2
    code, out, _ = run(capsys, "inspect", "crl.pem", "--json")
    assert json.loads(out)[0]["crl_number"] == 1
    verify = openssl(
        "verify", "-crl_check", "-CAfile", "ca/ca.pem", "-CRLfile", "crl.pem", "billing.pem"
    )
    assert verify.returncode != 0
    assert b"revoked" in verify.stdout + verify.stderr


def test_intermediate_ca_from_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(capsys, "init", str(tmp_path / "root"))[0] == 0
    code, _, err = run(
        capsys, "init", str(tmp_path / "issuing"), "--parent", str(tmp_path / "root")
    )
    assert code == 0, err
    stem = str(tmp_path / "svc")
    assert run(capsys, "client", "--ca", str(tmp_path / "issuing"), "svc", "--out", stem)[0] == 0
    chain = (tmp_path / "svc.pem").read_bytes()
    assert chain.count(b"BEGIN CERTIFICATE") == 2
    (tmp_path / "leaf.pem").write_bytes(
        chain.split(b"-----END CERTIFICATE-----\n")[0] + b"-----END CERTIFICATE-----\n"
    )
    (tmp_path / "inter.pem").write_bytes(chain.split(b"-----END CERTIFICATE-----\n", 1)[1])
    result = openssl(
        "verify", "-CAfile", str(tmp_path / "root" / "ca.pem"),
        "-untrusted", str(tmp_path / "inter.pem"), str(tmp_path / "leaf.pem"),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_backup_pin_prints_only_the_pin(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(
        capsys, "backup-pin", str(tmp_path / "backup.pem"), "--key-type", "ed25519"
    )
    assert code == 0, err
    assert out.count("\n") == 1
    assert out.startswith("sha256/")
    assert stat.S_IMODE((tmp_path / "backup.pem").stat().st_mode) == 0o600
    assert run(capsys, "pin", str(tmp_path / "backup.pem"))[1] == out


@pytest.fixture
def scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A CA directory, a non-PEM file and an encrypted key; WRONG_PASS set, UNSET_VAR_XYZ not."""
    CA.init(tmp_path / "ca")
    (tmp_path / "file").write_text("not a directory, not PEM\n")
    CA().private_key_pem(b"right").write_to_path(tmp_path / "enc-key.pem")
    monkeypatch.setenv("WRONG_PASS", "wrong")
    monkeypatch.delenv("UNSET_VAR_XYZ", raising=False)
    return tmp_path


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        pytest.param(["server", "--ca", "{tmp}/none", "localhost"], 1, "no CA in", id="missing-ca"),
        pytest.param(["server", "--ca", "{ca}", "bad host"], 1, "bad SAN", id="bad-san"),
        pytest.param(
            ["client", "--ca", "{ca}", "x", "--uri", "spiffe://Bad/x", "--out", "{tmp}/x"],
            1,
            "bad SPIFFE ID",
            id="bad-spiffe-id",
        ),
        pytest.param(
            ["client", "--ca", "{ca}", "x", "--key-type", "dsa"], 2, "invalid choice", id="key-type"
        ),
        pytest.param(["quickstart", "{tmp}/file/sub"], 1, "cannot", id="unwritable-directory"),
        pytest.param(
            ["pin", "{tmp}/enc-key.pem", "--passphrase-env", "WRONG_PASS"],
            1,
            "wrong passphrase",
            id="wrong-passphrase",
        ),
        pytest.param(
            ["pin", "{tmp}/enc-key.pem", "--passphrase-env", "UNSET_VAR_XYZ"],
            1,
            "is not set",
            id="unset-passphrase-env",
        ),
        pytest.param(["pin", "{tmp}/file"], 1, "no certificate, public key", id="not-pem"),
        pytest.param(["inspect", "{tmp}/absent.pem"], 1, "cannot read", id="missing-file"),
        pytest.param(["revoke", "--ca", "{ca}", "nobody"], 1, "no certificate named", id="revoke"),
        pytest.param([], 2, "required", id="no-command"),
        pytest.param(["init"], 2, "required", id="missing-argument"),
    ],
)
def test_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], scene: Path, argv: list[str], code: int, message: str
) -> None:
    args = [a.format(tmp=scene, ca=scene / "ca") for a in argv]
    status, out, err = run(capsys, *args)
    assert status == code
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith("certs-tool: error: ")
    assert message in err


def test_pin_and_inspect_accept_every_key_form(
    capsys: pytest.CaptureFixture[str], certs_client: IssuedCert, tmp_path: Path
) -> None:
    cert = certs_client.cert_pem.write_to_path(tmp_path / "c.pem")
    expected = "sha256/" + _openssl_pin(cert)
    forms = {
        "public.pem": openssl("x509", "-pubkey", "-noout", "-in", str(cert)).stdout,
        "cert.der": openssl("x509", "-outform", "DER", "-in", str(cert)).stdout,
        "key.pem": certs_client.private_key_pem().bytes(),
        "chain.pem": certs_client.chain_pem.bytes(),
    }
    for name, data in forms.items():
        (tmp_path / name).write_bytes(data)
        code, out, err = run(capsys, "pin", str(tmp_path / name))
        assert (code, out.strip()) == (0, expected), (name, err)
    code, out, _ = run(capsys, "inspect", "--json", str(tmp_path / "public.pem"))
    assert json.loads(out) == [{"type": "public key", "key_type": "ec-p256", "spki_pin": expected}]
    certs_client.private_key_pem(b"pw").write_to_path(tmp_path / "enc.pem")
    code, out, _ = run(capsys, "inspect", "--json", str(tmp_path / "enc.pem"))
    assert json.loads(out) == [{"type": "private key", "encrypted": True}]
    code, out, _ = run(capsys, "inspect", str(tmp_path / "key.pem"))
    assert expected in out


def test_renew_in_place_needs_force(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    CA.init(ca_dir).issue_client("svc").chain_pem.write_to_path(tmp_path / "svc.pem")
    code, _, err = run(capsys, "renew", "--ca", str(ca_dir), str(tmp_path / "svc.pem"))
    assert code == 1
    assert "already exists" in err
    before = (tmp_path / "svc.pem").read_bytes()
    code, _, err = run(capsys, "renew", "--ca", str(ca_dir), str(tmp_path / "svc.pem"), "--force")
    assert code == 0, err
    assert (tmp_path / "svc.pem").read_bytes() != before
