"""The openssl CLI agrees with certs_tool: chains verify, purposes match, pins and PKCS#12 read."""

from __future__ import annotations

import base64
import hashlib
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, pkcs12

from certs_tool import CA, IssuedCert, KeyType, generate_key
from mtls_hooks.core._identity import cert_fingerprint
from tests.peers import need_binary

TIMEOUT_S = 20


def openssl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the openssl CLI (skipped outside CI when it is missing, a failure in CI)."""
    return subprocess.run(
        [need_binary("openssl"), *args],
        input=stdin,
        capture_output=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def _write_chain(tmp_path: Path, ca: CA, leaf: IssuedCert) -> list[str]:
    """Write root, intermediates and leaf; return the `openssl verify` arguments."""
    root = ca.root_pem.write_to_path(tmp_path / "root.pem")
    leaf_file = leaf.cert_pem.write_to_path(tmp_path / "leaf.pem")
    args = ["-CAfile", str(root)]
    if leaf.intermediates:
        untrusted = tmp_path / "untrusted.pem"
        untrusted.write_bytes(leaf.chain_pem.bytes().replace(leaf.cert_pem.bytes(), b""))
        args += ["-untrusted", str(untrusted)]
    return [*args, str(leaf_file)]


@pytest.fixture(scope="module")
def two_level_ca() -> CA:
    root = CA(name="root", path_length=1)
    return root.create_intermediate(name="level 1", path_length=0, key_type="ec-p384")


@pytest.mark.parametrize("depth", [0, 1], ids=["root-issued", "intermediate-issued"])
@pytest.mark.parametrize("role", ["server", "client"])
def test_openssl_verify_and_purpose(
    certs_ca: CA, two_level_ca: CA, depth: int, role: str, tmp_path: Path
) -> None:
    ca = certs_ca if depth == 0 else two_level_ca
    leaf = (
        ca.issue_server("localhost", "127.0.0.1")
        if role == "server"
        else ca.issue_client("billing", uris=["spiffe://example.org/billing"])
    )
    args = _write_chain(tmp_path, ca, leaf)
    good, bad = ("sslserver", "sslclient") if role == "server" else ("sslclient", "sslserver")
    assert openssl("verify", "-purpose", good, *args).returncode == 0
    assert openssl("verify", "-purpose", bad, *args).returncode != 0
    purposes = openssl("x509", "-noout", "-purpose", "-in", args[-1]).stdout.decode()
    assert "SSL client : Yes" in purposes if role == "client" else "SSL client : No" in purposes
    assert "SSL server : Yes" in purposes if role == "server" else "SSL server : No" in purposes


@pytest.mark.parametrize("kind", [KeyType.ED25519, KeyType.RSA_2048, KeyType.EC_P384])
def test_openssl_verifies_other_key_types(kind: KeyType, tmp_path: Path) -> None:
    ca = CA(key_type=kind)
    leaf = ca.issue_client("x", key_type=kind)
    assert openssl("verify", *_write_chain(tmp_path, ca, leaf)).returncode == 0


def test_openssl_rejects_other_ca(certs_client: IssuedCert, tmp_path: Path) -> None:
    assert openssl("verify", *_write_chain(tmp_path, CA(), certs_client)).returncode != 0


def test_openssl_verify_crl_check(tmp_path: Path) -> None:
    ca = CA()
    good, bad = ca.issue_client("good"), ca.issue_client("bad")
    ca.revoke(bad)
    crl = ca.crl_pem().write_to_path(tmp_path / "crl.pem")
    root = ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    for leaf, expected in ((good, 0), (bad, 2)):
        leaf_file = leaf.cert_pem.write_to_path(tmp_path / f"{expected}.pem")
        result = openssl(
            "verify", "-crl_check", "-CAfile", str(root), "-CRLfile", str(crl), str(leaf_file)
        )
        assert result.returncode == expected, result.stdout + result.stderr
    text = openssl("crl", "-noout", "-text", "-in", str(crl)).stdout.decode()
    assert "X509v3 CRL Number" in text
    assert "X509v3 Authority Key Identifier" in text
    assert "Next Update" in text


def _openssl_pin(cert_file: Path) -> str:
    pubkey = openssl("x509", "-pubkey", "-noout", "-in", str(cert_file)).stdout
    der = openssl("pkey", "-pubin", "-outform", "DER", stdin=pubkey).stdout
    digest = openssl("dgst", "-sha256", "-binary", stdin=der).stdout
    return base64.b64encode(digest).decode()


@pytest.mark.parametrize("kind", [KeyType.EC_P256, KeyType.RSA_2048, KeyType.ED25519])
def test_pin_equals_openssl_pipeline(certs_ca: CA, kind: KeyType, tmp_path: Path) -> None:
    leaf = certs_ca.issue_client("pinned", key_type=kind)
    cert_file = leaf.cert_pem.write_to_path(tmp_path / "leaf.pem")
    assert leaf.spki_pin == "sha256/" + _openssl_pin(cert_file)
    fingerprint = openssl("x509", "-noout", "-fingerprint", "-sha256", "-in", str(cert_file))
    assert (
        fingerprint.stdout.decode().split("=")[1].strip().replace(":", "").lower()
        == leaf.fingerprint
    )


def test_renewal_keeps_the_pin(certs_ca: CA, tmp_path: Path) -> None:
    original = certs_ca.issue_client("renewed", uris=["spiffe://example.org/r"])
    renewed = certs_ca.renew(original)
    assert renewed.spki_pin == original.spki_pin
    assert renewed.certificate.serial_number != original.certificate.serial_number
    assert renewed.fingerprint != original.fingerprint
    assert renewed.certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ) == original.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert openssl("verify", *_write_chain(tmp_path, certs_ca, renewed)).returncode == 0


@pytest.mark.parametrize("passphrase", [b"s3cret", None], ids=["encrypted", "plain"])
def test_pkcs12_loads_with_openssl_and_cryptography(
    two_level_ca: CA, passphrase: bytes | None, tmp_path: Path
) -> None:
    leaf = two_level_ca.issue_client("p12", key=generate_key())
    p12 = leaf.pkcs12(passphrase).write_to_path(tmp_path / "id.p12")
    assert p12.stat().st_mode & 0o777 == 0o600
    passin = f"pass:{(passphrase or b'').decode()}"
    result = openssl("pkcs12", "-info", "-noout", "-in", str(p12), "-passin", passin)
    assert result.returncode == 0, result.stderr
    assert (
        openssl("pkcs12", "-info", "-noout", "-in", str(p12), "-passin", "pass:nope").returncode
        != 0
    )
    loaded = pkcs12.load_pkcs12(p12.read_bytes(), passphrase)
    assert isinstance(loaded.cert, pkcs12.PKCS12Certificate)
    assert cert_fingerprint(loaded.cert.certificate) == leaf.fingerprint
    assert isinstance(loaded.key, type(leaf.private_key))
    spki = loaded.key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert "sha256/" + base64.b64encode(hashlib.sha256(spki).digest()).decode() == leaf.spki_pin
    assert [c.certificate for c in loaded.additional_certs] == list(leaf.intermediates)
