"""Reading and writing a CA kept on disk.

A CA directory holds ``ca.pem`` (the CA certificate), ``ca-key.pem`` (PKCS#8, 0600,
optionally encrypted), ``ca-parents.pem`` (an intermediate's issuers, nearest first) and
``index.json`` (see :mod:`certs_tool._index`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from certs_tool._blob import Blob
from certs_tool._errors import CertsToolError
from certs_tool._index import Index
from certs_tool._issued import load_certificates, pem_of
from certs_tool._keys import PrivateKey, load_private_key, private_key_pem

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "INDEX_FILE",
    "StoredCA",
    "read_ca_dir",
    "read_ca_files",
    "write_ca_dir",
]

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
CA_PARENTS_FILE = "ca-parents.pem"
INDEX_FILE = "index.json"


@dataclass(frozen=True, slots=True)
class StoredCA:
    """The parts of a CA as read from disk."""

    cert: x509.Certificate
    key: PrivateKey
    parents: tuple[x509.Certificate, ...]
    index: Index


def read_ca_files(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    passphrase: bytes | None,
) -> StoredCA:
    """Read a CA certificate file (followed by its parents, if any) and its key file.

    Raises:
        CertsToolError: if a file is missing or unreadable, or the passphrase is wrong.
    """
    certs = load_certificates(Blob.from_path(cert_path).bytes(), source=str(cert_path))
    key_data = Blob.from_path(key_path, secret=True).bytes()
    key = load_private_key(key_data, passphrase, source=str(key_path))
    return StoredCA(certs[0], key, tuple(certs[1:]), Index())


def read_ca_dir(directory: str | os.PathLike[str], passphrase: bytes | None) -> StoredCA:
    """Read a CA directory written by :func:`write_ca_dir`.

    Raises:
        CertsToolError: if the directory holds no CA, the passphrase is wrong, or the
            index is corrupt.
    """
    root = Path(directory)
    if not (root / CA_CERT_FILE).is_file():
        raise CertsToolError(f"no CA in {root} (missing {CA_CERT_FILE}; run certs-tool init)")
    stored = read_ca_files(root / CA_CERT_FILE, root / CA_KEY_FILE, passphrase)
    parents_file = root / CA_PARENTS_FILE
    parents = (
        tuple(load_certificates(Blob.from_path(parents_file).bytes(), source=str(parents_file)))
        if parents_file.is_file()
        else stored.parents
    )
    return StoredCA(stored.cert, stored.key, parents, Index.load(root / INDEX_FILE))


def write_ca_dir(
    directory: str | os.PathLike[str],
    stored: StoredCA,
    passphrase: bytes | None,
    *,
    force: bool,
) -> Path:
    """Write a CA into ``directory``, creating it if needed, and return its path.

    Raises:
        CertsToolError: if a file exists and ``force`` is false, or the directory is not
            writable.
    """
    root = Path(directory)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CertsToolError(f"cannot create {root}: {exc.strerror or exc}") from exc
    # Check every target first so a refusal leaves no half-written CA behind.
    targets = [CA_CERT_FILE, CA_KEY_FILE, INDEX_FILE] + (
        [CA_PARENTS_FILE] if stored.parents else []
    )
    existing = [name for name in targets if (root / name).exists()]
    if existing and not force:
        raise CertsToolError(f"{root / existing[0]} already exists (use --force to overwrite)")
    # The key goes first: if the directory is unwritable nothing else is left behind.
    private_key_pem(stored.key, passphrase).write_to_path(root / CA_KEY_FILE, force=force)
    pem_of(stored.cert).write_to_path(root / CA_CERT_FILE, force=force)
    if stored.parents:
        pem_of(*stored.parents).write_to_path(root / CA_PARENTS_FILE, force=force)
    write_index(root, stored.index)
    return root


def write_index(root: Path, index: Index) -> None:
    """Replace ``index.json`` in ``root``.

    Raises:
        CertsToolError: if it cannot be written.
    """
    index.to_blob().write_to_path(root / INDEX_FILE, force=True)
