"""An issued leaf certificate with its private key: the identity a server or client presents."""

from __future__ import annotations

import os
import ssl
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from certs_tool._blob import Blob
from certs_tool._errors import CertsToolError
from certs_tool._keys import KeyType, PrivateKey, key_type_of, load_private_key, private_key_pem
from mtls_hooks.core._identity import cert_fingerprint, spki_pin

__all__ = ["CertifiedKey", "IssuedCert", "load_certificates", "pem_of"]


def pem_of(*certs: x509.Certificate) -> Blob:
    """Return the certificates as one concatenated PEM blob."""
    return Blob(b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs))


def load_certificates(data: bytes, *, source: str = "input") -> list[x509.Certificate]:
    """Parse every certificate in a PEM bundle, or one DER certificate.

    Raises:
        CertsToolError: if ``data`` holds no certificate.
    """
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise CertsToolError(f"{source} holds no readable certificate") from exc


class CertifiedKey:
    """A certificate and its private key; the base of :class:`IssuedCert` and ``CA``.

    Attributes:
        certificate: the certificate.
        private_key: its key.
    """

    certificate: x509.Certificate
    private_key: PrivateKey

    @property
    def key_type(self) -> KeyType:
        """The key algorithm."""
        return key_type_of(self.private_key)

    @property
    def cert_pem(self) -> Blob:
        """The certificate alone, PEM."""
        return pem_of(self.certificate)

    @property
    def spki_pin(self) -> str:
        """The ``sha256/<base64>`` SPKI pin; it survives renewal with the same key."""
        return spki_pin(self.certificate)

    @property
    def fingerprint(self) -> str:
        """Lowercase hex SHA-256 of the DER certificate."""
        return cert_fingerprint(self.certificate)

    def private_key_pem(self, passphrase: bytes | None = None) -> Blob:
        """The key as PKCS#8 PEM, encrypted when a passphrase is given.

        Raises:
            CertsToolError: if the passphrase is empty.
        """
        return private_key_pem(self.private_key, passphrase)


class IssuedCert(CertifiedKey):
    """A leaf certificate, its private key and the intermediates between it and the root.

    Attributes:
        certificate: the leaf.
        private_key: its key.
        intermediates: issuing CA certificates, nearest first, without the root.
    """

    def __init__(
        self,
        certificate: x509.Certificate,
        private_key: PrivateKey,
        intermediates: Sequence[x509.Certificate] = (),
    ) -> None:
        """Pair a certificate with its key.

        Raises:
            CertsToolError: if the key does not belong to the certificate.
        """
        if spki_pin(certificate) != spki_pin(private_key):
            raise CertsToolError("the private key does not match the certificate")
        self.certificate = certificate
        self.private_key = private_key
        self.intermediates = tuple(intermediates)

    @classmethod
    def from_files(
        cls,
        cert_path: str | os.PathLike[str],
        key_path: str | os.PathLike[str],
        passphrase: bytes | None = None,
    ) -> IssuedCert:
        """Load a certificate file (leaf first, then intermediates) and its key file.

        Raises:
            CertsToolError: if a file is missing or unreadable, the passphrase is wrong,
                or the key does not match the certificate.
        """
        certs = load_certificates(Blob.from_path(cert_path).bytes(), source=str(cert_path))
        key_data = Blob.from_path(key_path, secret=True).bytes()
        key = load_private_key(key_data, passphrase, source=str(key_path))
        return cls(certs[0], key, certs[1:])

    def __repr__(self) -> str:
        return f"<IssuedCert {self.certificate.subject.rfc4514_string()!r} {self.spki_pin}>"

    @property
    def chain_pem(self) -> Blob:
        """The leaf followed by its intermediates, PEM: what a TLS peer should send."""
        return pem_of(self.certificate, *self.intermediates)

    def private_key_and_chain_pem(self) -> Blob:
        """The unencrypted key followed by the chain, PEM, in one secret blob."""
        return Blob(self.private_key_pem().bytes() + self.chain_pem.bytes(), secret=True)

    def pkcs12(self, passphrase: bytes | None = None, *, friendly_name: str | None = None) -> Blob:
        """Export key, leaf and intermediates as PKCS#12 (``.p12``/``.pfx``).

        Raises:
            CertsToolError: if the passphrase is empty.
        """
        if passphrase is not None and not passphrase:
            raise CertsToolError("an empty passphrase would leave the key unprotected")
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        name = (friendly_name or _common_name(self.certificate) or "certs-tool").encode()
        data = pkcs12.serialize_key_and_certificates(
            name, self.private_key, self.certificate, list(self.intermediates) or None, encryption
        )
        return Blob(data, secret=True)

    def configure_cert(self, ctx: ssl.SSLContext) -> None:
        """Make ``ctx`` present this certificate, its chain and its key.

        Raises:
            CertsToolError: if the TLS library refuses the key or certificate.
        """
        with self.chain_pem.tempfile() as cert_file, self.private_key_pem().tempfile() as key_file:
            try:
                ctx.load_cert_chain(cert_file, key_file)
            except ssl.SSLError as exc:
                raise CertsToolError(f"the TLS library refused the certificate: {exc}") from exc


def _common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    value = names[0].value if names else None
    return value if isinstance(value, str) else None
