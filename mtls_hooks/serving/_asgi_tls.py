"""The ASGI TLS extension (spec 0.2): what the verified connection tells the application.

Hypercorn 0.18 never puts ``tls`` in the scope (pgjones/hypercorn#62); the serving core
builds it here once per connection and adds it to every HTTP and WebSocket scope.
https://asgi.readthedocs.io/en/latest/specs/tls.html
"""

from __future__ import annotations

import ssl
from typing import Any

from mtls_hooks.core._identity import PeerIdentity

__all__ = ["tls_extension"]


def tls_extension(ssl_object: ssl.SSLObject, server_cert_pem: str | None) -> dict[str, Any]:
    """Build the ASGI TLS extension (spec 0.2) for one connection.

    ``client_cert_chain`` is leaf first, PEM. Python 3.11 exposes the verified chain only
    through the private ``_sslobj.get_verified_chain()`` (public from 3.13); the leaf alone
    is used when that is unavailable, and on a resumed session, for which OpenSSL keeps the
    peer certificate but no verified chain (the getter returns ``None``).
    """
    chain_pem: list[str] = []
    getter = getattr(ssl_object, "get_verified_chain", None) or getattr(
        getattr(ssl_object, "_sslobj", None), "get_verified_chain", None
    )
    chain = getter() if getter is not None else None
    if chain:
        chain_pem = [
            cert.public_bytes(ssl._ssl.ENCODING_PEM)  # type: ignore[attr-defined]
            for cert in chain
        ]
    else:
        leaf = ssl_object.getpeercert(binary_form=True)
        if leaf is not None:
            chain_pem = [ssl.DER_cert_to_PEM_cert(leaf)]
    leaf_der = ssl_object.getpeercert(binary_form=True)
    name = PeerIdentity.from_der(leaf_der).subject if leaf_der else None
    version = ssl_object.version()
    cipher = ssl_object.cipher()
    return {
        "server_cert": server_cert_pem,
        "client_cert_chain": chain_pem,
        "client_cert_name": name,
        # CERT_REQUIRED: a connection only exists when verification succeeded.
        "client_cert_error": None,
        "tls_version": _TLS_VERSION_CODES.get(version or ""),
        "cipher_suite": _cipher_code(cipher[0]) if cipher else None,
    }


# ASGI TLS spec: tls_version is the 16-bit TLS protocol version number.
_TLS_VERSION_CODES = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def _cipher_code(name: str) -> int | None:
    return _CIPHER_IDS.get(name)


def _cipher_ids() -> dict[str, int]:
    # ASGI TLS spec: cipher_suite is the 16-bit IANA id. The stdlib reports names only;
    # get_ciphers() carries the id in the low 16 bits of "id".
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    return {c["name"]: c["id"] & 0xFFFF for c in probe.get_ciphers()}


_CIPHER_IDS = _cipher_ids()
