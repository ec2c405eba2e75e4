"""Certificate revocation lists (RFC 5280 §5), signed by the CA that issued the leaves."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certs_tool._blob import Blob
from certs_tool._keys import PrivateKey, signature_hash

__all__ = ["build_crl", "crl_pem"]

# Backdated like certificates, so a peer with a slightly slow clock accepts a new CRL.
_BACKDATE = dt.timedelta(minutes=5)


def build_crl(
    *,
    issuer: x509.Certificate,
    signing_key: PrivateKey,
    revoked: Iterable[tuple[int, dt.datetime]],
    number: int,
    next_update: dt.timedelta,
    last_update: dt.datetime | None = None,
) -> x509.CertificateRevocationList:
    """Sign a CRL listing ``revoked`` ``(serial, time)`` pairs.

    It carries the CRL number and the AKI (both required by RFC 5280 §5.2.1 and §5.2.3,
    non-critical) and a nextUpdate, without which OpenSSL treats the CRL as never
    expiring. ``last_update`` (default: now) dates the CRL; with it in the past, the
    nextUpdate can be too: an expired CRL, as one that nobody republished.
    """
    now = last_update or dt.datetime.now(dt.UTC)
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(now - _BACKDATE)
        .next_update(now + next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    return builder.sign(signing_key, signature_hash(signing_key))


def crl_pem(crl: x509.CertificateRevocationList) -> Blob:
    """The CRL as a PEM blob."""
    return Blob(crl.public_bytes(Encoding.PEM))
