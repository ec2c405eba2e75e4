"""Key types, key generation, PKCS#8 serialisation and loading, and offline backup keys."""

from __future__ import annotations

import enum
import os
from typing import TypeAlias

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from certs_tool._blob import Blob
from certs_tool._errors import CertsToolError
from mtls_hooks.core._identity import spki_pin

__all__ = [
    "KeyType",
    "PrivateKey",
    "backup_key",
    "generate_key",
    "key_type_of",
    "load_private_key",
    "private_key_pem",
    "signature_hash",
]

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
"""The private key types certs_tool issues for and signs with."""


class KeyType(enum.StrEnum):
    """The supported key algorithms; the string values are what the CLI accepts."""

    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"
    ED25519 = "ed25519"

    @classmethod
    def parse(cls, value: KeyType | str) -> KeyType:
        """Return the key type named by ``value``.

        Raises:
            CertsToolError: if ``value`` names no supported key type.
        """
        try:
            return cls(str(value).lower())
        except ValueError:
            choices = ", ".join(member.value for member in cls)
            raise CertsToolError(f"unknown key type {value!r} (choose from {choices})") from None


_RSA_BITS = {KeyType.RSA_2048: 2048, KeyType.RSA_3072: 3072, KeyType.RSA_4096: 4096}
_CURVES: dict[KeyType, ec.EllipticCurve] = {
    KeyType.EC_P256: ec.SECP256R1(),
    KeyType.EC_P384: ec.SECP384R1(),
}


def generate_key(key_type: KeyType | str = KeyType.EC_P256) -> PrivateKey:
    """Generate a new private key.

    Raises:
        CertsToolError: if ``key_type`` is unknown.
    """
    kind = KeyType.parse(key_type)
    if kind in _RSA_BITS:
        # 65537 is the only public exponent anyone should use (cryptography's advice).
        return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[kind])
    if kind is KeyType.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(_CURVES[kind])


def key_type_of(key: object) -> KeyType:
    """Return the :class:`KeyType` of a private or public key.

    Raises:
        CertsToolError: for keys certs_tool does not support (DSA, other curves, ...).
    """
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        for kind, bits in _RSA_BITS.items():
            if key.key_size == bits:
                return kind
    elif isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        for kind, curve in _CURVES.items():
            if key.curve.name == curve.name:
                return kind
    elif isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return KeyType.ED25519
    raise CertsToolError(f"unsupported key: {type(key).__name__}")


def signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | None:
    """Return the hash to sign with ``key``: None for Ed25519, which hashes internally."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    # Match the hash strength to the curve (RFC 5480 §4): P-384 pairs with SHA-384.
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def private_key_pem(key: PrivateKey, passphrase: bytes | None = None) -> Blob:
    """Serialise ``key`` as PKCS#8 PEM, encrypted when a passphrase is given.

    Raises:
        CertsToolError: if the passphrase is empty.
    """
    if passphrase is None:
        encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    elif not passphrase:
        raise CertsToolError("an empty passphrase would leave the key unprotected")
    else:
        encryption = serialization.BestAvailableEncryption(passphrase)
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    return Blob(data, secret=True)


def load_private_key(
    data: bytes, passphrase: bytes | None = None, *, source: str = "key"
) -> PrivateKey:
    """Parse a PEM (PKCS#8 or traditional) or DER private key.

    Args:
        data: the key file's contents.
        passphrase: the passphrase of an encrypted key.
        source: a name for the key in error messages, usually its path.

    Raises:
        CertsToolError: if the key is encrypted and no or the wrong passphrase is given,
            is not a private key, or is of an unsupported type.
    """
    loader = (
        serialization.load_pem_private_key
        if b"-----BEGIN" in data
        else serialization.load_der_private_key
    )
    try:
        key = loader(data, passphrase)
    except TypeError as exc:
        # cryptography raises TypeError for a passphrase mismatch in kind, not value.
        if passphrase is None:
            raise CertsToolError(f"{source} is encrypted: a passphrase is needed") from exc
        raise CertsToolError(f"{source} is not encrypted but a passphrase was given") from exc
    except ValueError as exc:
        if passphrase is not None and b"ENCRYPTED" in data:
            raise CertsToolError(f"wrong passphrase for {source}") from exc
        raise CertsToolError(f"{source} is not a private key") from exc
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise CertsToolError(f"{source}: unsupported key type {type(key).__name__}")
    key_type_of(key)
    return key


def backup_key(
    path: str | os.PathLike[str],
    *,
    key_type: KeyType | str = KeyType.EC_P256,
    passphrase: bytes | None = None,
    force: bool = False,
) -> str:
    """Generate a backup key, write it to ``path`` (0600) and return only its SPKI pin.

    RFC 7469 §2.5 asks for a backup pin whose key is kept offline: configure the returned
    pin beside the live one, and move the key file somewhere safe.

    Raises:
        CertsToolError: if the key type is unknown or the file cannot be written.
    """
    key = generate_key(key_type)
    private_key_pem(key, passphrase).write_to_path(path, force=force)
    return spki_pin(key)
