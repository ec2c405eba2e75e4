"""Certificate construction on cryptography's builder, with every extension's criticality stated.

| extension         | CA                          | leaf                                   |
|-------------------|-----------------------------|----------------------------------------|
| BasicConstraints  | critical, ca, path length   | critical, not a CA                     |
| KeyUsage          | critical, certSign, cRLSign | critical, digitalSignature (+ keyEnc.  |
|                   |                             | for RSA, for TLS 1.2 RSA key transport)|
| ExtendedKeyUsage  | absent                      | non-critical, serverAuth/clientAuth    |
| SubjectAltName    | absent                      | critical iff the subject is empty      |
| SKI / AKI         | non-critical                | non-critical                           |

RFC 5280 §4.2.1.9 makes BasicConstraints critical in CA certificates, §4.2.1.3 recommends
KeyUsage critical, and §4.2.1.6 requires the SAN critical when the subject is empty.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs_tool._errors import CertsToolError
from certs_tool._keys import PrivateKey, signature_hash

__all__ = [
    "EKU_NAMES",
    "build_ca_cert",
    "build_leaf_cert",
    "display_name",
    "eku_oids",
    "rebuild_leaf_cert",
    "role_of",
    "subject_name",
    "validity",
]

EKU_NAMES = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}
# Backdating absorbs clock skew between the issuing host and the peers that verify.
_BACKDATE = dt.timedelta(minutes=5)
_CN_MAX_LEN = 64  # RFC 5280 ub-common-name
_KEY_USAGE_FLAGS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


def validity(
    not_before: dt.datetime | None, not_after: dt.datetime | None, default: dt.timedelta
) -> tuple[dt.datetime, dt.datetime]:
    """Resolve the validity window; naive datetimes are taken as UTC.

    Raises:
        CertsToolError: if the window is empty.
    """
    start = _utc(not_before) if not_before else dt.datetime.now(dt.UTC) - _BACKDATE
    end = _utc(not_after) if not_after else start + _BACKDATE + default
    if end <= start:
        raise CertsToolError(f"not_after ({end.isoformat()}) must be after not_before")
    return start, end


def subject_name(common_name: str | None) -> x509.Name:
    """A subject with only a CN, or the empty subject.

    Raises:
        CertsToolError: if the common name is empty or too long.
    """
    if common_name is None:
        return x509.Name([])
    if not common_name or len(common_name) > _CN_MAX_LEN:
        raise CertsToolError(f"a common name must be 1 to 64 characters: {common_name!r}")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def eku_oids(eku: Iterable[str]) -> list[x509.ObjectIdentifier]:
    """Map ``"server"``/``"client"`` to EKU OIDs.

    Raises:
        CertsToolError: for an unknown or empty usage list.
    """
    names = list(dict.fromkeys(eku))
    unknown = [name for name in names if name not in EKU_NAMES]
    if unknown or not names:
        raise CertsToolError(f"extended key usage must be 'server' and/or 'client', got {names}")
    return [EKU_NAMES[name] for name in names]


def role_of(cert: x509.Certificate) -> str:
    """``"ca"``, ``"server"``, ``"client"`` or ``"server+client"`` from the extensions."""
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return "ca"
    except x509.ExtensionNotFound:
        pass
    try:
        usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return "any"
    roles = [name for name, oid in EKU_NAMES.items() if oid in usages]
    return "+".join(sorted(roles)) or "other"


def build_ca_cert(
    *,
    public_key: CertificatePublicKeyTypes,
    subject: x509.Name,
    issuer: x509.Certificate | None,
    signing_key: PrivateKey,
    path_length: int | None,
    window: tuple[dt.datetime, dt.datetime],
) -> x509.Certificate:
    """Build a CA certificate, self-signed when ``issuer`` is None."""
    builder = _base(public_key, subject, issuer, signing_key, window)
    builder = builder.add_extension(
        x509.BasicConstraints(ca=True, path_length=path_length), critical=True
    ).add_extension(
        _key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True),
        critical=True,
    )
    return builder.sign(signing_key, signature_hash(signing_key))


def build_leaf_cert(
    *,
    public_key: CertificatePublicKeyTypes,
    subject: x509.Name,
    sans: Sequence[x509.GeneralName],
    ekus: Sequence[x509.ObjectIdentifier],
    issuer: x509.Certificate,
    signing_key: PrivateKey,
    window: tuple[dt.datetime, dt.datetime],
) -> x509.Certificate:
    """Build an end-entity certificate.

    Raises:
        CertsToolError: if it would have neither a subject nor a SAN.
    """
    if not sans and not list(subject):
        raise CertsToolError("a certificate needs a common name or at least one SAN")
    builder = _base(public_key, subject, issuer, signing_key, window)
    builder = (
        builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(
                digital_signature=True,
                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(list(ekus)), critical=False)
    )
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(list(sans)), critical=not list(subject)
        )
    return builder.sign(signing_key, signature_hash(signing_key))


def rebuild_leaf_cert(
    old: x509.Certificate,
    *,
    issuer: x509.Certificate,
    signing_key: PrivateKey,
    window: tuple[dt.datetime, dt.datetime],
) -> x509.Certificate:
    """Build a new certificate with ``old``'s key, subject, SANs and EKU (a renewal).

    Raises:
        CertsToolError: if ``old`` has no extended key usage.
    """
    try:
        sans = list(old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        sans = []
    try:
        ekus = list(old.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound as exc:
        raise CertsToolError("the certificate has no extended key usage to renew") from exc
    return build_leaf_cert(
        public_key=old.public_key(),
        subject=old.subject,
        sans=sans,
        ekus=ekus,
        issuer=issuer,
        signing_key=signing_key,
        window=window,
    )


def display_name(cert: x509.Certificate) -> str:
    """The common name, else the first SAN, else the serial: how the index names a cert."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if names and isinstance(names[0].value, str):
        return names[0].value
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return str(next(iter(sans)).value)
    except (x509.ExtensionNotFound, StopIteration):
        return f"serial {cert.serial_number:x}"


def _base(
    public_key: CertificatePublicKeyTypes,
    subject: x509.Name,
    issuer: x509.Certificate | None,
    signing_key: PrivateKey,
    window: tuple[dt.datetime, dt.datetime],
) -> x509.CertificateBuilder:
    if issuer is None:
        issuer_name = subject
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key())
    else:
        issuer_name = issuer.subject
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(window[0])
        .not_valid_after(window[1])
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(aki, critical=False)
    )


def _key_usage(**granted: bool) -> x509.KeyUsage:
    flags = dict.fromkeys(_KEY_USAGE_FLAGS, False)
    flags.update(granted)
    return x509.KeyUsage(**flags)


def _utc(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
