"""A certificate authority: root or intermediate, issuing, renewing, revoking and CRLs."""

from __future__ import annotations

import datetime as dt
import os
import ssl
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509

from certs_tool._blob import Blob
from certs_tool._build import (
    build_ca_cert,
    build_leaf_cert,
    display_name,
    eku_oids,
    rebuild_leaf_cert,
    role_of,
    subject_name,
    validity,
)
from certs_tool._errors import CertsToolError
from certs_tool._index import Index
from certs_tool._issued import CertifiedKey, IssuedCert, pem_of
from certs_tool._keys import KeyType, PrivateKey, generate_key, key_type_of
from certs_tool._ledger import Ledger
from certs_tool._names import parse_sans
from certs_tool._store import StoredCA, read_ca_dir, read_ca_files, write_ca_dir
from mtls_hooks.core._identity import spki_pin

__all__ = ["CA", "DEFAULT_CA_VALIDITY", "DEFAULT_LEAF_VALIDITY"]

DEFAULT_CA_VALIDITY = dt.timedelta(days=5 * 365)
# Short on purpose: test and private PKIs should rehearse renewal, and 90 days is what
# ACME CAs issue.
DEFAULT_LEAF_VALIDITY = dt.timedelta(days=90)


class CA(Ledger, CertifiedKey):
    """A certificate authority that issues server and client certificates.

    ``CA()`` creates a new self-signed root in memory; :meth:`create_intermediate` adds a
    level; :meth:`init` and :meth:`load_dir` keep a CA in a directory (``ca.pem``,
    ``ca-key.pem`` 0600, ``index.json``).
    """

    def __init__(
        self,
        *,
        name: str = "certs-tool test CA",
        key_type: KeyType | str = KeyType.EC_P256,
        key: PrivateKey | None = None,
        path_length: int | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> None:
        """Create a new self-signed root CA.

        Args:
            name: the CA's common name.
            key_type: the algorithm of a new key, ignored when ``key`` is given.
            key: an existing key to reuse.
            path_length: how many intermediates may follow; None means unlimited.
            not_before: start of validity; defaults to five minutes ago.
            not_after: end of validity; defaults to five years later.

        Raises:
            CertsToolError: for an unknown key type, bad name or empty validity window.
        """
        signing_key = key if key is not None else generate_key(key_type)
        cert = build_ca_cert(
            public_key=signing_key.public_key(),
            subject=subject_name(name),
            issuer=None,
            signing_key=signing_key,
            path_length=path_length,
            window=validity(not_before, not_after, DEFAULT_CA_VALIDITY),
        )
        self._setup(cert, signing_key, (), Index(), None)

    def _setup(
        self,
        cert: x509.Certificate,
        key: PrivateKey,
        parents: Sequence[x509.Certificate],
        index: Index,
        directory: Path | None,
    ) -> None:
        self.certificate = cert
        self.private_key = key
        self.parents = tuple(parents)
        self.directory = directory
        self._index = index

    @classmethod
    def _from_parts(
        cls,
        cert: x509.Certificate,
        key: PrivateKey,
        parents: Sequence[x509.Certificate] = (),
        index: Index | None = None,
        directory: Path | None = None,
    ) -> CA:
        if spki_pin(cert) != spki_pin(key):
            raise CertsToolError("the CA key does not match the CA certificate")
        if role_of(cert) != "ca":
            raise CertsToolError("the certificate is not a CA certificate")
        ca = cls.__new__(cls)
        ca._setup(cert, key, parents, index or Index(), directory)
        return ca

    # -- persistence -------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        cert_path: str | os.PathLike[str],
        key_path: str | os.PathLike[str],
        passphrase: bytes | None = None,
    ) -> CA:
        """Load a CA from a certificate file (then its parents, nearest first) and a key file.

        Raises:
            CertsToolError: if a file is missing, the passphrase is wrong, the key does
                not match, or the certificate is not a CA.
        """
        stored = read_ca_files(cert_path, key_path, passphrase)
        return cls._from_parts(stored.cert, stored.key, stored.parents)

    @classmethod
    def load_dir(cls, directory: str | os.PathLike[str], passphrase: bytes | None = None) -> CA:
        """Load a CA kept in ``directory`` by :meth:`init`; it keeps its index there.

        Raises:
            CertsToolError: if the directory holds no CA, the passphrase is wrong, or the
                index is corrupt.
        """
        stored = read_ca_dir(directory, passphrase)
        return cls._from_parts(
            stored.cert, stored.key, stored.parents, stored.index, Path(directory)
        )

    def save_dir(
        self,
        directory: str | os.PathLike[str],
        passphrase: bytes | None = None,
        *,
        force: bool = False,
    ) -> None:
        """Write this CA to ``directory`` (created if needed) and keep its index there.

        Raises:
            CertsToolError: if a file exists and ``force`` is false, or the directory is
                not writable.
        """
        stored = StoredCA(self.certificate, self.private_key, self.parents, self._index)
        self.directory = write_ca_dir(directory, stored, passphrase, force=force)

    @classmethod
    def init(
        cls,
        directory: str | os.PathLike[str],
        *,
        passphrase: bytes | None = None,
        force: bool = False,
        name: str = "certs-tool CA",
        key_type: KeyType | str = KeyType.EC_P256,
        not_after: dt.datetime | None = None,
    ) -> CA:
        """Create a new root CA and keep it in ``directory``.

        Raises:
            CertsToolError: as :class:`CA` and :meth:`save_dir` do.
        """
        ca = cls(name=name, key_type=key_type, not_after=not_after)
        ca.save_dir(directory, passphrase, force=force)
        return ca

    # -- views ---------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"<CA {self.certificate.subject.rfc4514_string()!r}>"

    @property
    def root(self) -> x509.Certificate:
        """The self-signed root at the top of this CA's chain (itself for a root)."""
        return self.parents[-1] if self.parents else self.certificate

    @property
    def root_pem(self) -> Blob:
        """The root certificate, PEM: the trust anchor to give peers."""
        return pem_of(self.root)

    def configure_trust(self, ctx: ssl.SSLContext) -> None:
        """Make ``ctx`` trust certificates chaining to this CA's root."""
        ctx.load_verify_locations(cadata=self.root_pem.bytes().decode("ascii"))

    # -- issuing -------------------------------------------------------------------------

    def create_intermediate(
        self,
        *,
        name: str = "certs-tool intermediate CA",
        key_type: KeyType | str | None = None,
        path_length: int | None = 0,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> CA:
        """Issue an intermediate CA under this one.

        Args:
            name: its common name.
            key_type: its key algorithm; defaults to this CA's.
            path_length: how many further intermediates it may sign; 0 means leaves only.
            not_before: start of validity.
            not_after: end of validity; defaults to five years.

        Raises:
            CertsToolError: for an unknown key type, bad name or empty window.
        """
        key = generate_key(key_type or key_type_of(self.private_key))
        cert = build_ca_cert(
            public_key=key.public_key(),
            subject=subject_name(name),
            issuer=self.certificate,
            signing_key=self.private_key,
            path_length=path_length,
            window=validity(not_before, not_after, DEFAULT_CA_VALIDITY),
        )
        self._record(cert, name)
        return CA._from_parts(cert, key, (self.certificate, *self.parents))

    def issue(
        self,
        common_name: str | None,
        sans: Iterable[str] = (),
        *,
        eku: Iterable[str] = ("client",),
        key_type: KeyType | str | None = None,
        key: PrivateKey | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> IssuedCert:
        """Issue a leaf certificate with any extended key usage.

        Args:
            common_name: the subject CN, or None for an empty subject (SAN then critical).
            sans: SAN values; each one's type is detected (see :func:`parse_san`).
            eku: ``"server"`` and/or ``"client"``.
            key_type: algorithm of a new key; defaults to EC P-256.
            key: reuse this key instead of generating one.
            not_before: start of validity; defaults to five minutes ago.
            not_after: end of validity; defaults to 90 days later.

        Raises:
            CertsToolError: for a bad SAN or name, an unknown key type or usage, or an
                empty validity window.
        """
        names = parse_sans(sans)
        oids = eku_oids(eku)
        subject = subject_name(common_name)
        leaf_key = key if key is not None else generate_key(key_type or KeyType.EC_P256)
        cert = build_leaf_cert(
            public_key=leaf_key.public_key(),
            subject=subject,
            sans=names,
            ekus=oids,
            issuer=self.certificate,
            signing_key=self.private_key,
            window=validity(not_before, not_after, DEFAULT_LEAF_VALIDITY),
        )
        self._record(cert, common_name or str(names[0].value))
        return IssuedCert(cert, leaf_key, self.issuing_chain)

    def issue_server(
        self,
        *hosts: str,
        common_name: str | None = None,
        key_type: KeyType | str | None = None,
        key: PrivateKey | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> IssuedCert:
        """Issue a serverAuth certificate for DNS names and IP addresses.

        The common name defaults to the first host, for tools that still show it.

        Raises:
            CertsToolError: if no host is given, or as :meth:`issue` does.
        """
        if not hosts:
            raise CertsToolError("a server certificate needs at least one host name or address")
        if common_name is None and len(hosts[0]) <= 64:
            common_name = hosts[0]
        return self.issue(
            common_name, hosts, eku=("server",), key_type=key_type, key=key,
            not_before=not_before, not_after=not_after,
        )  # fmt: skip

    def issue_client(
        self,
        common_name: str | None = None,
        *,
        uris: Iterable[str] = (),
        dns: Iterable[str] = (),
        emails: Iterable[str] = (),
        eku: Iterable[str] = ("client",),
        key_type: KeyType | str | None = None,
        key: PrivateKey | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> IssuedCert:
        """Issue a clientAuth certificate; a SPIFFE ID in ``uris`` makes it an X509-SVID.

        ``eku`` exists for negative tests (a server-only certificate offered as a client).

        Raises:
            CertsToolError: if there is neither a name nor a SAN, or as :meth:`issue` does.
        """
        return self.issue(
            common_name, [*uris, *dns, *emails], eku=eku, key_type=key_type, key=key,
            not_before=not_before, not_after=not_after,
        )  # fmt: skip

    def renew(
        self,
        issued: IssuedCert,
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> IssuedCert:
        """Reissue a certificate for the same key, so its SPKI pin stays the same.

        Raises:
            CertsToolError: if this CA did not issue it, or the window is empty.
        """
        cert = self.renew_certificate(
            issued.certificate, not_before=not_before, not_after=not_after
        )
        return IssuedCert(cert, issued.private_key, self.issuing_chain)

    def renew_certificate(
        self,
        old: x509.Certificate,
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> x509.Certificate:
        """Reissue ``old`` with a new serial and validity, same subject, SANs, EKU and key.

        The private key is not needed. The validity keeps the old length unless given.

        Raises:
            CertsToolError: if this CA did not issue ``old``, or the window is empty.
        """
        self._check_issued_here(old)
        length = old.not_valid_after_utc - old.not_valid_before_utc
        cert = rebuild_leaf_cert(
            old,
            issuer=self.certificate,
            signing_key=self.private_key,
            window=validity(not_before, not_after, length),
        )
        self._record(cert, display_name(cert))
        return cert

    # -- internals -----------------------------------------------------------------------

    @property
    def issuing_chain(self) -> tuple[x509.Certificate, ...]:
        """What a leaf of this CA sends after itself: the intermediates, nearest first.

        Never the root: peers must already trust it, and sending it only costs bytes.
        """
        return (self.certificate, *self.parents[:-1]) if self.parents else ()
