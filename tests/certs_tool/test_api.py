"""The certs_tool API: names, extensions, files, revocation bookkeeping and its errors."""

from __future__ import annotations

import datetime as dt
import importlib
import ipaddress
import ssl
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

import certs_tool
from certs_tool import CA, Blob, CertsToolError, IssuedCert, generate_key, parse_san
from mtls_hooks.core._policy import normalize_spki_pin


def test_exported_members() -> None:
    assert certs_tool.__all__ == sorted(certs_tool.__all__, key=lambda n: (not n.isupper(), n))
    assert {"CA", "Blob", "CertsToolError", "IssuedCert", "KeyType", "backup_key"} <= set(
        certs_tool.__all__
    )
    for name in certs_tool.__all__:
        # Each public name is the very object its home module defines (not a stub, a copy
        # or a name that resolves somewhere else).
        home = importlib.import_module(certs_tool._HOME[name])
        assert getattr(certs_tool, name) is getattr(home, name), name


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("127.0.0.1", x509.IPAddress(ipaddress.ip_address("127.0.0.1")), id="ipv4"),
        pytest.param("::1", x509.IPAddress(ipaddress.ip_address("::1")), id="ipv6"),
        pytest.param("Example.COM", x509.DNSName("example.com"), id="dns-lowercased"),
        pytest.param("*.example.com", x509.DNSName("*.example.com"), id="wildcard"),
        pytest.param("bücher.example", x509.DNSName("xn--bcher-kva.example"), id="idn"),
        pytest.param("ops@example.org", x509.RFC822Name("ops@example.org"), id="email"),
        pytest.param(
            "spiffe://example.org/ns/billing",
            x509.UniformResourceIdentifier("spiffe://example.org/ns/billing"),
            id="spiffe",
        ),
        pytest.param(
            "https://example.org/hook",
            x509.UniformResourceIdentifier("https://example.org/hook"),
            id="https-uri",
        ),
    ],
)
def test_san_type_detected(value: str, expected: x509.GeneralName) -> None:
    assert parse_san(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("exa mple.com", id="space"),
        pytest.param("-bad.example", id="leading-hyphen"),
        pytest.param("a..b", id="empty-label"),
        pytest.param("*.com", id="wildcard-on-tld"),
        pytest.param("foo.*.example.com", id="inner-wildcard"),
        pytest.param("spiffe://Example.org/x", id="spiffe-uppercase-domain"),
        pytest.param("spiffe://example.org/x?y=1", id="spiffe-query"),
        pytest.param("spiffe://example.org/x#f", id="spiffe-fragment"),
        pytest.param("spiffe://example.org:8080/x", id="spiffe-port"),
        pytest.param("spiffe://example.org/a//b", id="spiffe-empty-segment"),
        pytest.param("spiffe://example.org/a/../b", id="spiffe-dot-segment"),
        pytest.param("spiffe://example.org/x/", id="spiffe-trailing-slash"),
        pytest.param("https:///nohost", id="uri-without-host"),
        pytest.param("@example.org", id="email-no-local"),
    ],
)
def test_bad_san_raises_our_error(value: str) -> None:
    with pytest.raises(CertsToolError, match="bad S"):
        parse_san(value)


def test_svid_has_exactly_one_uri(certs_ca: CA) -> None:
    with pytest.raises(CertsToolError, match="exactly one URI SAN"):
        certs_ca.issue_client("x", uris=["spiffe://a.org/x", "https://a.org/y"])
    svid = certs_ca.issue_client(None, uris=["spiffe://a.org/x"], dns=["x.a.org"])
    assert svid.certificate.subject == x509.Name([])


def _ext(
    cert: x509.Certificate, kind: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


def test_extension_criticality(certs_ca: CA) -> None:
    inter = certs_ca.create_intermediate(name="inter", path_length=0)
    leaf = inter.issue_client("named", emails=["a@example.org"])
    anonymous = inter.issue_client(None, uris=["spiffe://example.org/anon"])
    for ca_cert in (certs_ca.certificate, inter.certificate):
        constraints = _ext(ca_cert, x509.BasicConstraints)
        assert constraints.critical
        assert constraints.value.ca  # type: ignore[attr-defined]
        usage = _ext(ca_cert, x509.KeyUsage)
        assert usage.critical
        assert usage.value.key_cert_sign  # type: ignore[attr-defined]
        assert usage.value.crl_sign  # type: ignore[attr-defined]
    assert _ext(inter.certificate, x509.BasicConstraints).value.path_length == 0  # type: ignore[attr-defined]
    cert = leaf.certificate
    assert _ext(cert, x509.BasicConstraints).critical
    assert not _ext(cert, x509.BasicConstraints).value.ca  # type: ignore[attr-defined]
    assert _ext(cert, x509.KeyUsage).critical
    assert not _ext(cert, x509.KeyUsage).value.key_cert_sign  # type: ignore[attr-defined]
    eku = _ext(cert, x509.ExtendedKeyUsage)
    assert not eku.critical
    assert list(eku.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # type: ignore[call-overload]
    assert not _ext(cert, x509.SubjectAlternativeName).critical
    assert _ext(anonymous.certificate, x509.SubjectAlternativeName).critical
    assert not _ext(cert, x509.SubjectKeyIdentifier).critical
    aki = _ext(cert, x509.AuthorityKeyIdentifier)
    assert not aki.critical
    ski = _ext(inter.certificate, x509.SubjectKeyIdentifier).value
    assert aki.value.key_identifier == ski.digest  # type: ignore[attr-defined]
    assert leaf.intermediates == (inter.certificate,)


def test_default_validity_is_short_for_leaves(certs_client: IssuedCert, certs_ca: CA) -> None:
    leaf = certs_client.certificate
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert dt.timedelta(days=89) < lifetime < dt.timedelta(days=91)
    assert leaf.not_valid_before_utc < dt.datetime.now(dt.UTC)
    ca_life = certs_ca.certificate.not_valid_after_utc - certs_ca.certificate.not_valid_before_utc
    assert ca_life > dt.timedelta(days=365)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(
            lambda ca: ca.issue_client("x", key_type="dsa-1024"), "unknown key type", id="key-type"
        ),
        pytest.param(
            lambda ca: ca.issue_client("x", eku=("code",)), "extended key usage", id="eku"
        ),
        pytest.param(
            lambda ca: ca.issue_client(None), "common name or at least one SAN", id="no-name"
        ),
        pytest.param(lambda ca: ca.issue_client("x" * 65), "1 to 64", id="long-cn"),
        pytest.param(lambda ca: ca.issue_server(), "at least one host", id="no-host"),
        pytest.param(
            lambda ca: ca.issue_client("x", not_after=dt.datetime(2000, 1, 1, tzinfo=dt.UTC)),
            "must be after",
            id="empty-window",
        ),
        pytest.param(
            lambda ca: ca.renew(CA().issue_client("x")), "was not issued by", id="renew-foreign"
        ),
        pytest.param(
            lambda ca: ca.revoke(CA().issue_client("x")), "was not issued by", id="revoke-foreign"
        ),
        pytest.param(
            lambda ca: ca.revoke_name("nobody"), "no certificate named", id="revoke-unknown"
        ),
    ],
)
def test_bad_input_raises_our_error(
    certs_ca: CA, call: Callable[[CA], object], message: str
) -> None:
    with pytest.raises(CertsToolError, match=message):
        call(certs_ca)


def test_blob_files(tmp_path: Path) -> None:
    secret = CA().private_key_pem()
    target = secret.write_to_path(tmp_path / "key.pem")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    with pytest.raises(CertsToolError, match="already exists"):
        secret.write_to_path(target)
    public = Blob(b"public")
    public.write_to_path(target, force=True)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert target.read_bytes() == b"public" == public.bytes()
    with public.tempfile() as name:
        assert Path(name).read_bytes() == b"public"
    assert not Path(name).exists()
    with pytest.raises(CertsToolError, match="cannot write"):
        public.write_to_path(tmp_path / "missing-dir" / "x.pem")
    with pytest.raises(CertsToolError, match="cannot read"):
        Blob.from_path(tmp_path / "absent.pem")
    assert [p.name for p in tmp_path.iterdir()] == ["key.pem"]  # no temp files left


def test_ca_directory_round_trip(tmp_path: Path) -> None:
    ca = CA.init(tmp_path / "ca", passphrase=b"pw", name="disk CA")
    assert stat.S_IMODE((tmp_path / "ca" / "ca-key.pem").stat().st_mode) == 0o600
    client = ca.issue_client("billing")
    with pytest.raises(CertsToolError, match="wrong passphrase"):
        CA.load_dir(tmp_path / "ca", b"nope")
    with pytest.raises(CertsToolError, match="passphrase is needed"):
        CA.load_dir(tmp_path / "ca")
    with pytest.raises(CertsToolError, match="no CA in"):
        CA.load_dir(tmp_path)
    again = CA.load_dir(tmp_path / "ca", b"pw")
    assert again.fingerprint == ca.fingerprint
    [entry] = again.revoke_name("billing")
    assert entry.serial == client.certificate.serial_number
    crl = CA.load_dir(tmp_path / "ca", b"pw").crl()
    assert [revoked.serial_number for revoked in crl] == [entry.serial]
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1
    assert (
        CA.load_dir(tmp_path / "ca", b"pw")
        .crl()
        .extensions.get_extension_for_class(x509.CRLNumber)
        .value.crl_number
        == 2
    )


@pytest.mark.parametrize(
    ("signed_days_ago", "valid_days", "expired"),
    [
        pytest.param(0, 7, False, id="fresh"),
        pytest.param(10, 7, True, id="expired"),
        pytest.param(7, 8, False, id="old-but-valid"),
    ],
)
def test_crl_dates(signed_days_ago: int, valid_days: int, expired: bool) -> None:
    ca = CA()
    now = dt.datetime.now(dt.UTC)
    signed = (now - dt.timedelta(days=signed_days_ago)).replace(microsecond=0)  # X.509 time
    crl = ca.crl(last_update=signed, next_update=dt.timedelta(days=valid_days))
    # Backdated five minutes like certificates; nextUpdate counts from the signing time.
    assert crl.last_update_utc == signed - dt.timedelta(minutes=5)
    assert crl.next_update_utc == signed + dt.timedelta(days=valid_days)
    assert (crl.next_update_utc < now) is expired
    assert crl.is_signature_valid(ca.certificate.public_key())  # type: ignore[arg-type]
    pem = ca.crl_pem(last_update=signed, next_update=dt.timedelta(days=valid_days)).bytes()
    assert x509.load_pem_x509_crl(pem).next_update_utc == crl.next_update_utc


def test_intermediate_directory_round_trip(tmp_path: Path) -> None:
    inter = CA().create_intermediate()
    inter.save_dir(tmp_path)
    loaded = CA.load_dir(tmp_path)
    assert loaded.root == inter.root
    assert loaded.issue_client("x").intermediates == (inter.certificate,)


def test_ca_load_from_files(certs_ca: CA, tmp_path: Path) -> None:
    cert = certs_ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    key = certs_ca.private_key_pem().write_to_path(tmp_path / "ca-key.pem")
    assert CA.load(cert, key).spki_pin == certs_ca.spki_pin
    other_key = CA().private_key_pem().write_to_path(tmp_path / "other-key.pem")
    with pytest.raises(CertsToolError, match="does not match"):
        CA.load(cert, other_key)


def test_reused_key_keeps_pin(certs_ca: CA) -> None:
    key = generate_key("ec-p384")
    first = certs_ca.issue_client("a", key=key)
    second = certs_ca.issue_client("b", key=key)
    assert first.spki_pin == second.spki_pin == certs_tool.spki_pin(key)


def test_key_mismatch_rejected(certs_client: IssuedCert) -> None:
    with pytest.raises(CertsToolError, match="does not match"):
        IssuedCert(certs_client.certificate, generate_key())


def test_configure_cert_translates_ssl_errors(certs_client: IssuedCert) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    certs_client.configure_cert(ctx)  # a good identity loads
    broken = IssuedCert.__new__(IssuedCert)
    broken.certificate = certs_client.certificate
    broken.private_key = generate_key()
    broken.intermediates = ()
    with pytest.raises(CertsToolError, match="refused"):
        broken.configure_cert(ctx)


def test_pin_beginning_with_slash_survives_normalisation() -> None:
    # About one key in 64 has a base64 digest starting with '/': "sha256//..." then looks
    # like curl's separator, so pins are parsed by length (see DESIGN.md).
    for _ in range(2000):
        pin = certs_tool.spki_pin(generate_key())
        if pin.startswith("sha256//"):
            break
    else:
        pytest.fail("no slash-leading pin in 2000 keys")
    assert normalize_spki_pin(pin) == pin
    assert normalize_spki_pin("sha256//" + pin.removeprefix("sha256/")) == pin


def test_backup_key_returns_only_the_pin(tmp_path: Path) -> None:
    pin = certs_tool.backup_key(tmp_path / "backup.pem", passphrase=b"offline")
    assert stat.S_IMODE((tmp_path / "backup.pem").stat().st_mode) == 0o600
    data = (tmp_path / "backup.pem").read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in data
    assert certs_tool.pin_of(data, b"offline") == pin


def test_plugin_fixtures(
    certs_ca: CA,
    certs_server: IssuedCert,
    certs_client: IssuedCert,
    certs_issue_client: Callable[..., IssuedCert],
) -> None:
    sans = certs_server.certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    client_sans = certs_client.certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value
    assert client_sans.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://test.example/client"
    ]
    assert certs_client.certificate.subject.rfc4514_string() == "CN=test-client"
    extra = certs_issue_client("extra", uris=["spiffe://test.example/extra"])
    assert isinstance(extra, IssuedCert)
    extra.certificate.verify_directly_issued_by(certs_ca.certificate)


def test_lazy_exports_match_all() -> None:
    assert set(certs_tool._HOME) == set(certs_tool.__all__)
    assert set(certs_tool.__all__) <= set(dir(certs_tool))
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = certs_tool.no_such_name


def test_plugin_import_is_light() -> None:
    # Importing the entry point must not import the implementation (see certs_tool/__init__).
    code = (
        "import sys, certs_tool.pytest_plugin; "
        "print(sorted(m for m in sys.modules if m.startswith(('certs_tool.', 'mtls_hooks'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, check=True, timeout=30
    ).stdout
    assert out.strip() == b"['certs_tool.pytest_plugin']"
