"""The verified peer identity: a parsed view of the leaf certificate a peer presented."""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import ipaddress
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)

from mtls_hooks.core._errors import ConfigurationError

__all__ = ["PeerIdentity", "cert_fingerprint", "peer_from_scope", "spki_pin"]

_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


def _spki_digest(key: CertificatePublicKeyTypes) -> bytes:
    der = key.public_bytes(serialization.Encoding.DER, _SPKI)
    return hashlib.sha256(der).digest()


def spki_pin(
    source: x509.Certificate | CertificatePublicKeyTypes | PrivateKeyTypes,
) -> str:
    """Return the SPKI pin ``sha256/<base64>`` of a certificate, public key or private key.

    The value equals curl's ``--pinnedpubkey`` hash, OkHttp's pin, Envoy's
    ``verify_certificate_spki`` and HPKP's ``pin-sha256``, and survives renewal with the
    same key.

    Raises:
        ConfigurationError: if ``source`` has no public key we can hash.
    """
    public_key: Any = source.public_key() if hasattr(source, "public_key") else source
    try:
        digest = _spki_digest(public_key)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ConfigurationError(f"cannot compute an SPKI pin of {type(source).__name__}") from exc
    return "sha256/" + base64.b64encode(digest).decode("ascii")


def cert_fingerprint(cert: x509.Certificate | bytes) -> str:
    """Return the lowercase hex SHA-256 of a certificate's DER encoding (64 characters).

    Args:
        cert: a parsed certificate, or its DER bytes.
    """
    der = cert if isinstance(cert, bytes) else cert.public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who is on the other end of a verified mTLS connection.

    Built from the leaf certificate after the TLS stack verified its chain. Compare
    identities with :class:`~mtls_hooks.PeerPolicy` rather than by hand.

    Attributes:
        subject: RFC 4514 subject, e.g. ``"CN=billing,O=Example"``.
        issuer: RFC 4514 issuer.
        serial: certificate serial number.
        not_before: start of validity (UTC).
        not_after: end of validity (UTC).
        dns_names: DNS SANs, lowercased.
        uris: URI SANs (SPIFFE IDs among them).
        emails: rfc822Name SANs.
        ip_addresses: IP address SANs.
        spki_pin: ``sha256/<base64>`` of the public key.
        fingerprint: lowercase hex SHA-256 of the DER certificate.
    """

    subject: str
    issuer: str
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    dns_names: tuple[str, ...]
    uris: tuple[str, ...]
    emails: tuple[str, ...]
    ip_addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    spki_pin: str
    fingerprint: str
    common_name: str | None = field(default=None)

    @property
    def spiffe_id(self) -> str | None:
        """The SPIFFE ID, when the certificate is an X509-SVID (exactly one URI SAN)."""
        if len(self.uris) == 1 and self.uris[0].startswith("spiffe://"):
            return self.uris[0]
        return None

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> PeerIdentity:
        """Build an identity from a parsed certificate."""
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = x509.SubjectAlternativeName([])
        cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        common_name = cns[0].value if cns else None
        return cls(
            subject=cert.subject.rfc4514_string(),
            issuer=cert.issuer.rfc4514_string(),
            serial=cert.serial_number,
            not_before=_utc(cert.not_valid_before_utc),
            not_after=_utc(cert.not_valid_after_utc),
            dns_names=tuple(name.lower() for name in san.get_values_for_type(x509.DNSName)),
            uris=tuple(san.get_values_for_type(x509.UniformResourceIdentifier)),
            emails=tuple(san.get_values_for_type(x509.RFC822Name)),
            ip_addresses=tuple(san.get_values_for_type(x509.IPAddress)),  # type: ignore[arg-type]
            spki_pin=spki_pin(cert),
            fingerprint=cert_fingerprint(cert),
            common_name=common_name if isinstance(common_name, str) else None,
        )

    @classmethod
    def from_der(cls, der: bytes) -> PeerIdentity:
        """Build (or fetch from a bounded cache) the identity of a DER certificate.

        Raises:
            ConfigurationError: if the bytes are not a certificate.
        """
        return _identity_from_der(der)

    def __str__(self) -> str:
        name = self.spiffe_id or self.common_name or self.subject
        return f"{name} ({self.spki_pin})"


# A connection's leaf is parsed once per handshake at most; repeat callers of the same
# certificate (keep-alive, many connections from one sender) hit this cache instead.
@functools.lru_cache(maxsize=1024)
def _identity_from_der(der: bytes) -> PeerIdentity:
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise ConfigurationError("not a DER X.509 certificate") from exc
    return PeerIdentity.from_certificate(cert)


def peer_from_scope(scope: Mapping[str, Any]) -> PeerIdentity | None:
    """Return the verified client identity of an ASGI scope, or ``None`` without one.

    Reads the ASGI TLS extension (spec 0.2) that the mtls-hooks server puts in every
    HTTP and WebSocket scope: ``extensions["tls"]["client_cert_chain"][0]`` is the leaf.
    """
    tls = (scope.get("extensions") or {}).get("tls")
    if not tls:
        return None
    chain = tls.get("client_cert_chain") or ()
    if not chain:
        return None
    return _identity_from_pem(chain[0])


@functools.lru_cache(maxsize=1024)
def _identity_from_pem(pem: str) -> PeerIdentity:
    try:
        der = ssl.PEM_cert_to_DER_cert(pem)
    except ValueError as exc:
        raise ConfigurationError("client_cert_chain[0] is not a PEM certificate") from exc
    return _identity_from_der(der)
