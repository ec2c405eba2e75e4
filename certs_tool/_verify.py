"""``certs-tool verify``: one certificate against CAs and CRLs, like ``openssl verify``.

It runs the verifier mtls-hooks applies to a certificate forwarded by a proxy
(:class:`mtls_hooks.proxy._verify.CertificateVerifier`): the chain and the CRLs through
pyOpenSSL (OpenSSL's ``X509_verify_cert`` with ``CRL_CHECK | CRL_CHECK_ALL``), then key usage
and validity through cryptography's verifier. So a certificate this command accepts is one
the proxy mode accepts, pins aside.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from certs_tool._blob import Blob
from certs_tool._errors import CertsToolError
from certs_tool._issued import load_certificates
from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.proxy._headers import ForwardedCertError
from mtls_hooks.proxy._verify import CertificateVerifier, Purpose

__all__ = ["verify_certificate_file"]


def verify_certificate_file(
    cert_path: str | Path,
    ca_files: Sequence[str | Path],
    crl_files: Sequence[str | Path] = (),
    *,
    purpose: Purpose = "client",
) -> str | None:
    """Verify the first certificate of ``cert_path`` (the rest help build the chain).

    Returns:
        ``None`` when it verifies, else the one-line reason it does not.

    Raises:
        CertsToolError: an unreadable certificate, CA or CRL file, or a CRL the CAs did not
            sign (the same start-up checks as ``mtls-hooks serve``).
    """
    certs = load_certificates(Blob.from_path(cert_path).bytes(), source=str(cert_path))
    try:
        verifier = CertificateVerifier.from_files(ca_files, crl_files, purpose=purpose)
    except ConfigurationError as exc:
        raise CertsToolError(str(exc)) from exc
    ders = [cert.public_bytes(Encoding.DER) for cert in certs]
    try:
        verifier.verify(ders[0], ders[1:])
    except ForwardedCertError as exc:
        return str(exc)
    return None
