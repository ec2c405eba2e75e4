"""The verifier behind proxy mode and ``certs-tool verify``: chain, CRL, EKU, validity, pins.

``certs-tool verify`` is compared with ``openssl verify -crl_check`` on the same files.
"""

from __future__ import annotations

import base64
import datetime as dt
import random
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certs_tool import CA
from certs_tool._cli import main as certs_tool_main
from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.core._policy import PeerPolicy
from mtls_hooks.proxy._headers import ForwardedCert, ForwardedCertError
from mtls_hooks.proxy._verify import CertificateVerifier, ForwardedVerifier
from tests.peers import need_binary
from tests.proxy.conftest import ProxyPki


def _verifier(pki: ProxyPki, **kwargs: object) -> CertificateVerifier:
    return CertificateVerifier.from_files([pki.ca_file], pki.crl_files, **kwargs)  # type: ignore[arg-type]


def _cert(pki: ProxyPki, name: str) -> ForwardedCert:
    chain = pki.clients[name]
    return ForwardedCert(chain[0], tuple(chain[1:]), "test")


@pytest.mark.parametrize(
    ("client", "message"),
    [
        pytest.param("revoked", "certificate revoked", id="revoked"),
        pytest.param("expired", "certificate has expired", id="expired"),
        pytest.param("other-ca", "unable to get local issuer", id="another-ca"),
        pytest.param("server-only", "does not include clientAuth", id="serverauth-only"),
    ],
)
def test_chain_checks_refuse(pki: ProxyPki, client: str, message: str) -> None:
    verifier = _verifier(pki)
    with pytest.raises(ForwardedCertError, match=message) as info:
        verifier.verify(pki.clients[client][0], pki.clients[client][1:])
    assert info.value.reason == "cert-verify-failed"
    assert info.value.status == 403


@pytest.mark.parametrize("client", ["good", "unpinned", "pin-on-intermediate"])
def test_chain_checks_pass(pki: ProxyPki, client: str) -> None:
    verified = _verifier(pki).verify(pki.clients[client][0], pki.clients[client][1:])
    assert verified.valid_until > dt.datetime.now(dt.UTC)


def test_server_purpose_wants_server_auth(pki: ProxyPki) -> None:
    server = _verifier(pki, purpose="server")
    server.verify(pki.clients["server-only"][0])
    with pytest.raises(ForwardedCertError, match="serverAuth"):
        server.verify(pki.clients["good"][0])


def test_truncated_der_is_a_typed_refusal(pki: ProxyPki) -> None:
    with pytest.raises(ForwardedCertError, match="truncated or corrupt"):
        _verifier(pki).verify(pki.clients["good"][0][:300])


def test_missing_crl_for_an_intermediate_fails_closed(tmp_path: Path) -> None:
    # CRL_CHECK_ALL: the intermediate's CRL is required; without it, nothing verifies.
    ca = CA()
    inter = ca.create_intermediate()
    leaf = inter.issue_client("deep")
    crl = x509.load_pem_x509_crl(ca.crl_pem().bytes())
    verifier = CertificateVerifier([ca.certificate], [crl])
    der = leaf.certificate.public_bytes(Encoding.DER)
    inter_der = inter.certificate.public_bytes(Encoding.DER)
    with pytest.raises(ForwardedCertError, match="unable to get certificate CRL"):
        verifier.verify(der, [inter_der])
    # Its twin: without CRLs configured at all, the same chain verifies.
    CertificateVerifier([ca.certificate]).verify(der, [inter_der])


def test_a_revoked_intermediate_refuses_its_leaves() -> None:
    # CRL_CHECK_ALL, not only CRL_CHECK: the intermediate's revocation counts too.
    ca = CA()
    inter = ca.create_intermediate()
    leaf = inter.issue_client("deep").certificate.public_bytes(Encoding.DER)
    inter_der = inter.certificate.public_bytes(Encoding.DER)
    crls = [x509.load_pem_x509_crl(inter.crl_pem().bytes())]
    verifier = CertificateVerifier(
        [ca.certificate], [x509.load_pem_x509_crl(ca.crl_pem().bytes()), *crls]
    )
    verifier.verify(leaf, [inter_der])
    ca.revoke(inter.certificate)
    revoked = CertificateVerifier(
        [ca.certificate], [x509.load_pem_x509_crl(ca.crl_pem().bytes()), *crls]
    )
    with pytest.raises(ForwardedCertError, match=r"certificate revoked \(CRL\) \(depth 1\)"):
        revoked.verify(leaf, [inter_der])


def test_a_ca_without_its_crl_is_a_configuration_error(pki: ProxyPki) -> None:
    with pytest.raises(ConfigurationError, match="has no CRL"):
        CertificateVerifier.from_files([pki.ca_file], pki.crl_files[:1])


def test_pins_are_checked_on_the_leaf(pki: ProxyPki) -> None:
    forwarded = ForwardedVerifier(_verifier(pki), PeerPolicy.from_rules([pki.pinned_spki]))
    assert forwarded.verify(_cert(pki, "good")).spki_pin == pki.pinned_spki
    for name in ("unpinned", "pin-on-intermediate"):
        with pytest.raises(ForwardedCertError) as info:
            forwarded.verify(_cert(pki, name))
        assert info.value.reason == "unpinned"


def test_verdicts_are_cached_per_certificate_and_bounded(pki: ProxyPki) -> None:
    forwarded = ForwardedVerifier(
        _verifier(pki), PeerPolicy.from_rules([pki.pinned_spki]), max_entries=2
    )
    good = _cert(pki, "good")
    forwarded.verify(good)
    forwarded.verify(good)
    assert forwarded.misses == 1
    for _ in range(2):
        with pytest.raises(ForwardedCertError):
            forwarded.verify(_cert(pki, "revoked"))
    assert forwarded.misses == 2
    # The same leaf with a different chain is a different key.
    forwarded.verify(ForwardedCert(good.leaf_der, (pki.clients["pin-on-intermediate"][1],), "t"))
    assert forwarded.misses == 3
    assert len(forwarded) == 2  # bounded: the oldest entry went
    forwarded.verify(good)
    assert forwarded.misses == 4


def test_cached_success_lapses_when_the_certificate_expires(pki: ProxyPki) -> None:
    now = [dt.datetime.now(dt.UTC).timestamp()]
    forwarded = ForwardedVerifier(
        _verifier(pki), PeerPolicy.from_rules([pki.pinned_spki]), clock=lambda: now[0]
    )
    good = _cert(pki, "good")
    forwarded.verify(good)
    leaf = x509.load_der_x509_certificate(good.leaf_der)
    now[0] = leaf.not_valid_after_utc.timestamp() + 1
    with pytest.raises(ForwardedCertError, match=r"not valid|expired"):
        forwarded.verify(good)


def test_cached_refusal_lapses_after_its_ttl(pki: ProxyPki) -> None:
    now = [dt.datetime.now(dt.UTC).timestamp()]
    forwarded = ForwardedVerifier(
        _verifier(pki), PeerPolicy.from_rules([]), failure_ttl_s=60, clock=lambda: now[0]
    )
    with pytest.raises(ForwardedCertError):
        forwarded.verify(_cert(pki, "good"))
    forwarded.policy = PeerPolicy.from_rules([pki.pinned_spki])
    with pytest.raises(ForwardedCertError):  # still the cached refusal
        forwarded.verify(_cert(pki, "good"))
    now[0] += 61
    forwarded.verify(_cert(pki, "good"))


# --------------------------------------------------------------------------- certs-tool verify


def _write_pem(path: Path, chain: list[bytes]) -> Path:
    path.write_text(
        "".join(
            "-----BEGIN CERTIFICATE-----\n"
            + base64.encodebytes(der).decode()
            + "-----END CERTIFICATE-----\n"
            for der in chain
        )
    )
    return path


@pytest.mark.parametrize(
    ("client", "ok"),
    [
        pytest.param("good", True, id="good"),
        pytest.param("revoked", False, id="revoked"),
        pytest.param("expired", False, id="expired"),
        pytest.param("other-ca", False, id="wrong-ca"),
    ],
)
def test_certs_tool_verify_agrees_with_openssl_verify(
    pki: ProxyPki, tmp_path: Path, capsys: pytest.CaptureFixture[str], client: str, ok: bool
) -> None:
    openssl = need_binary("openssl")
    cert = _write_pem(tmp_path / f"{client}.pem", pki.clients[client])
    crl_bundle = tmp_path / "crls.pem"
    crl_bundle.write_bytes(b"".join(Path(p).read_bytes() for p in pki.crl_files))
    done = subprocess.run(
        [openssl, "verify", "-crl_check", "-CAfile", pki.ca_file, "-CRLfile", str(crl_bundle),
         str(cert)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    argv = ["verify", str(cert), "--ca", pki.ca_file]
    for crl in pki.crl_files:
        argv += ["--crl", crl]
    status = certs_tool_main(argv)
    out = capsys.readouterr().out
    assert (done.returncode == 0) is ok, done.stdout + done.stderr
    assert status == done.returncode  # 0, or 2 as openssl verify
    assert len(out.splitlines()) == 1
    assert out.startswith(f"{cert}: OK" if ok else f"{cert}: verification failed: ")


def test_certs_tool_verify_unreadable_ca_is_an_error(
    pki: ProxyPki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert = _write_pem(tmp_path / "good.pem", pki.clients["good"])
    assert certs_tool_main(["verify", str(cert), "--ca", str(tmp_path / "missing.pem")]) == 1
    assert "error:" in capsys.readouterr().err


def test_mutated_der_is_only_ever_a_typed_refusal(pki: ProxyPki) -> None:
    rng = random.Random("proxy-der")
    verifier = _verifier(pki)
    leaf, inter = pki.clients["pin-on-intermediate"]
    for round_ in range(1500):
        data = bytearray(leaf)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] ^= rng.randrange(1, 256)  # always a change
        if round_ % 5 == 0:
            del data[rng.randrange(len(data)) :]
        with pytest.raises(ForwardedCertError):
            verifier.verify(bytes(data), [inter])


def _with_tbs_patch(der: bytes, offset_after_version: int, value: int) -> bytes:
    # TBSCertificate starts with "[0] { INTEGER 2 }" (v3), then the serial INTEGER.
    at = der.index(b"\xa0\x03\x02\x01\x02") + 4
    data = bytearray(der)
    data[at + offset_after_version] = value
    return bytes(data)


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        # cryptography raises InvalidVersion, which is no ValueError: once a 500.
        pytest.param(0, 0x21, "truncated or corrupt", id="invalid-version"),
        # cryptography only warns on a negative serial (RFC 5280 §4.1.2.2 forbids it).
        pytest.param(3, 0x80, "serial number", id="negative-serial"),
    ],
)
def test_certificates_cryptography_dislikes_are_typed_refusals(
    pki: ProxyPki, offset: int, value: int, message: str
) -> None:
    der = _with_tbs_patch(pki.clients["good"][0], offset, value)
    with pytest.raises(ForwardedCertError, match=message):
        _verifier(pki).verify(der)
