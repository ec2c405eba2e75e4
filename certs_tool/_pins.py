"""SPKI pins of whatever a user has at hand: a certificate, a public key or a private key.

The pin itself is :func:`mtls_hooks.core._identity.spki_pin`; this module only reads files into
something it can hash.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from certs_tool._errors import CertsToolError
from certs_tool._issued import load_certificates
from certs_tool._keys import PrivateKey, load_private_key
from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.core._identity import spki_pin

__all__ = ["load_key_source", "pin_of"]

KeySource = x509.Certificate | CertificatePublicKeyTypes | PrivateKey


def load_key_source(
    data: bytes, passphrase: bytes | None = None, *, source: str = "input"
) -> KeySource:
    """Parse the first certificate, public key or private key in PEM or DER ``data``.

    Raises:
        CertsToolError: if ``data`` holds none of them, or an encrypted key cannot be
            decrypted with ``passphrase``.
    """
    if b"PRIVATE KEY-----" in data:
        return load_private_key(data, passphrase, source=source)
    if b"PUBLIC KEY-----" in data:
        try:
            return serialization.load_pem_public_key(data)  # type: ignore[return-value]
        except ValueError as exc:
            raise CertsToolError(f"{source} holds an unreadable public key") from exc
    if b"-----BEGIN" not in data:
        # DER carries no label: try each kind in turn.
        try:
            return serialization.load_der_public_key(data)  # type: ignore[return-value]
        except ValueError:
            pass
        try:
            return load_private_key(data, passphrase, source=source)
        except CertsToolError:
            pass
    try:
        return load_certificates(data, source=source)[0]
    except CertsToolError:
        raise CertsToolError(f"{source} holds no certificate, public key or private key") from None


def pin_of(data: bytes, passphrase: bytes | None = None, *, source: str = "input") -> str:
    """Return the ``sha256/<base64>`` SPKI pin of a certificate, public or private key file.

    Raises:
        CertsToolError: as :func:`load_key_source` does, or for an unhashable key.
    """
    try:
        return spki_pin(load_key_source(data, passphrase, source=source))
    except ConfigurationError as exc:
        raise CertsToolError(f"{source}: {exc}") from exc
