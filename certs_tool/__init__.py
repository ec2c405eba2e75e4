"""certs_tool: a private test PKI from Python, from the ``certs-tool`` CLI and from pytest.

>>> from certs_tool import CA
>>> ca = CA()
>>> server = ca.issue_server("localhost", "127.0.0.1", "::1")
>>> client = ca.issue_client("billing", uris=["spiffe://example.org/billing"])
>>> client.spki_pin.startswith("sha256/")
True
"""

from certs_tool._blob import Blob
from certs_tool._ca import CA, DEFAULT_CA_VALIDITY, DEFAULT_LEAF_VALIDITY
from certs_tool._errors import CertsToolError
from certs_tool._index import Entry
from certs_tool._issued import IssuedCert, load_certificates
from certs_tool._keys import KeyType, PrivateKey, backup_key, generate_key, load_private_key
from certs_tool._ledger import DEFAULT_CRL_VALIDITY
from certs_tool._names import parse_san
from certs_tool._pins import pin_of
from mtls_hooks._identity import cert_fingerprint, spki_pin

__all__ = [
    "CA",
    "DEFAULT_CA_VALIDITY",
    "DEFAULT_CRL_VALIDITY",
    "DEFAULT_LEAF_VALIDITY",
    "Blob",
    "CertsToolError",
    "Entry",
    "IssuedCert",
    "KeyType",
    "PrivateKey",
    "backup_key",
    "cert_fingerprint",
    "generate_key",
    "load_certificates",
    "load_private_key",
    "parse_san",
    "pin_of",
    "spki_pin",
]
