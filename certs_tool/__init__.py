"""certs_tool: a private test PKI from Python, from the ``certs-tool`` CLI and from pytest.

>>> from certs_tool import CA
>>> ca = CA()
>>> server = ca.issue_server("localhost", "127.0.0.1", "::1")
>>> client = ca.issue_client("billing", uris=["spiffe://example.org/billing"])
>>> client.spki_pin.startswith("sha256/")
True

The names below are imported on first use (PEP 562). pytest imports the
``certs_tool.pytest_plugin`` entry point, and so this package, before pytest-cov starts
measuring; eager imports here would leave every module of certs_tool and mtls_hooks
uncovered at module level in each project that installs the plugin.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from certs_tool._blob import Blob
    from certs_tool._ca import CA, DEFAULT_CA_VALIDITY, DEFAULT_LEAF_VALIDITY
    from certs_tool._errors import CertsToolError
    from certs_tool._index import Entry
    from certs_tool._issued import IssuedCert, load_certificates
    from certs_tool._keys import KeyType, PrivateKey, backup_key, generate_key, load_private_key
    from certs_tool._ledger import DEFAULT_CRL_VALIDITY
    from certs_tool._names import parse_san
    from certs_tool._pins import pin_of
    from mtls_hooks.core._identity import cert_fingerprint, spki_pin

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

_HOME = {
    "CA": "certs_tool._ca",
    "DEFAULT_CA_VALIDITY": "certs_tool._ca",
    "DEFAULT_CRL_VALIDITY": "certs_tool._ledger",
    "DEFAULT_LEAF_VALIDITY": "certs_tool._ca",
    "Blob": "certs_tool._blob",
    "CertsToolError": "certs_tool._errors",
    "Entry": "certs_tool._index",
    "IssuedCert": "certs_tool._issued",
    "KeyType": "certs_tool._keys",
    "PrivateKey": "certs_tool._keys",
    "backup_key": "certs_tool._keys",
    "cert_fingerprint": "mtls_hooks.core._identity",
    "generate_key": "certs_tool._keys",
    "load_certificates": "certs_tool._issued",
    "load_private_key": "certs_tool._keys",
    "parse_san": "certs_tool._names",
    "pin_of": "certs_tool._pins",
    "spki_pin": "mtls_hooks.core._identity",
}


def __getattr__(name: str) -> object:
    try:
        home = _HOME[name]
    except KeyError:
        raise AttributeError(f"module 'certs_tool' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
