"""Describing certificates, CRLs and keys for people (``inspect``) and programs (``--json``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from certs_tool._build import role_of
from certs_tool._errors import CertsToolError
from certs_tool._issued import load_certificates
from certs_tool._keys import key_type_of
from certs_tool._pins import load_key_source
from mtls_hooks.core._identity import cert_fingerprint, spki_pin

__all__ = ["describe", "format_human"]

Description = dict[str, Any]

_EKU_NAMES = {
    x509.oid.ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
}
_SAN_KINDS: dict[type[x509.GeneralName], str] = {
    x509.DNSName: "dns",
    x509.IPAddress: "ip",
    x509.UniformResourceIdentifier: "uri",
    x509.RFC822Name: "email",
}


def describe(
    data: bytes, passphrase: bytes | None = None, *, source: str = "input"
) -> list[Description]:
    """Describe every certificate in ``data``, or the CRL, or the key it holds.

    Raises:
        CertsToolError: if ``data`` holds none of those, or an encrypted key cannot be read.
    """
    if b"X509 CRL-----" in data:
        try:
            return [_describe_crl(x509.load_pem_x509_crl(data))]
        except ValueError as exc:
            raise CertsToolError(f"{source} holds an unreadable CRL") from exc
    if b"CERTIFICATE-----" in data:
        return [_describe_cert(cert) for cert in load_certificates(data, source=source)]
    if b"ENCRYPTED PRIVATE KEY-----" in data and passphrase is None:
        return [{"type": "private key", "encrypted": True}]
    loaded = load_key_source(data, passphrase, source=source)
    if isinstance(loaded, x509.Certificate):
        return [_describe_cert(loaded)]
    public: CertificatePublicKeyTypes = (
        loaded.public_key() if hasattr(loaded, "public_key") else loaded
    )
    return [
        {
            "type": "public key" if public is loaded else "private key",
            "key_type": key_type_of(public).value,
            "spki_pin": spki_pin(public),
        }
    ]


def format_human(descriptions: list[Description]) -> str:
    """Render descriptions as ``key: value`` blocks separated by blank lines."""
    blocks = []
    for item in descriptions:
        width = max(len(key) for key in item)
        lines = []
        for key, value in item.items():
            shown = (", ".join(str(v) for v in value) or "-") if isinstance(value, list) else value
            lines.append(f"{key.replace('_', ' '):<{width}}  {shown}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _describe_cert(cert: x509.Certificate) -> Description:
    now = dt.datetime.now(dt.UTC)
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        path_length = constraints.path_length if constraints.ca else None
    except x509.ExtensionNotFound:
        path_length = None
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        eku = [_EKU_NAMES.get(oid, oid.dotted_string) for oid in usages]
    except x509.ExtensionNotFound:
        eku = []
    return {
        "type": "certificate",
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": f"{cert.serial_number:x}",
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "valid_now": cert.not_valid_before_utc <= now <= cert.not_valid_after_utc,
        "role": role_of(cert),
        "path_length": path_length,
        "key_type": _key_type_name(cert.public_key()),
        "sans": _sans(cert),
        "extended_key_usage": eku,
        "spki_pin": spki_pin(cert),
        "fingerprint": cert_fingerprint(cert),
    }


def _describe_crl(crl: x509.CertificateRevocationList) -> Description:
    try:
        number: int | None = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    next_update = crl.next_update_utc
    return {
        "type": "crl",
        "issuer": crl.issuer.rfc4514_string(),
        "crl_number": number,
        "last_update": crl.last_update_utc.isoformat(),
        "next_update": next_update.isoformat() if next_update else None,
        "revoked": [f"{entry.serial_number:x}" for entry in crl],
    }


def _sans(cert: x509.Certificate) -> list[str]:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [f"{_SAN_KINDS.get(type(name), 'other')}:{name.value}" for name in names]


def _key_type_name(key: CertificatePublicKeyTypes) -> str:
    try:
        return key_type_of(key).value
    except CertsToolError:
        return type(key).__name__
