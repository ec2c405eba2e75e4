"""What a CA remembers: the certificates it issued, those it revoked, and its CRLs."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from certs_tool._blob import Blob
from certs_tool._build import display_name, role_of
from certs_tool._errors import CertsToolError
from certs_tool._index import Entry, Index
from certs_tool._issued import IssuedCert
from certs_tool._keys import PrivateKey
from certs_tool._revocation import build_crl, crl_pem
from certs_tool._store import write_index

__all__ = ["DEFAULT_CRL_VALIDITY", "Ledger"]

DEFAULT_CRL_VALIDITY = dt.timedelta(days=7)


class Ledger:
    """The bookkeeping half of :class:`~certs_tool.CA`: issued and revoked serials, CRLs.

    The index lives in memory and, when the CA has a directory, in its ``index.json``.
    """

    certificate: x509.Certificate
    private_key: PrivateKey
    directory: Path | None
    _index: Index

    def _persist(self) -> None:
        if self.directory is not None:
            write_index(self.directory, self._index)

    def revoke(self, cert_or_serial: x509.Certificate | IssuedCert | int) -> None:
        """Revoke a certificate; the next :meth:`crl_pem` lists it.

        Raises:
            CertsToolError: if a certificate (not a bare serial) was not issued by this CA.
        """
        if isinstance(cert_or_serial, int):
            serial = cert_or_serial
        else:
            cert = (
                cert_or_serial.certificate
                if isinstance(cert_or_serial, IssuedCert)
                else cert_or_serial
            )
            self._check_issued_here(cert)
            serial = cert.serial_number
        self._index.revoke(serial, dt.datetime.now(dt.UTC))
        self._persist()

    def revoke_name(self, name_or_serial: str) -> list[Entry]:
        """Revoke every certificate recorded under this name (or serial); return them.

        Raises:
            CertsToolError: if the index knows no such name or serial.
        """
        entries = self._index.find(name_or_serial)
        if not entries:
            raise CertsToolError(f"no certificate named {name_or_serial!r} in this CA's index")
        now = dt.datetime.now(dt.UTC)
        revoked = [self._index.revoke(entry.serial, now) for entry in entries]
        self._persist()
        return revoked

    @property
    def issued(self) -> tuple[Entry, ...]:
        """What this CA's index knows: every issued (and revoked) certificate."""
        return tuple(self._index.entries)

    def crl(
        self,
        *,
        next_update: dt.timedelta = DEFAULT_CRL_VALIDITY,
        last_update: dt.datetime | None = None,
    ) -> x509.CertificateRevocationList:
        """Sign a fresh CRL listing every revoked certificate.

        Args:
            next_update: how long after ``last_update`` the CRL stays valid.
            last_update: when the CRL claims to be issued (default: now); a date far enough
                in the past gives an expired CRL, for failing-twin tests.

        Raises:
            CertsToolError: if the CA directory cannot be updated.
        """
        number = self._index.next_crl_number()
        self._persist()
        return build_crl(
            issuer=self.certificate,
            signing_key=self.private_key,
            revoked=self._index.revoked(),
            number=number,
            next_update=next_update,
            last_update=last_update,
        )

    def crl_pem(
        self,
        *,
        next_update: dt.timedelta = DEFAULT_CRL_VALIDITY,
        last_update: dt.datetime | None = None,
    ) -> Blob:
        """A fresh CRL as PEM; see :meth:`crl`."""
        return crl_pem(self.crl(next_update=next_update, last_update=last_update))

    def configure_crl(self, ctx: ssl.SSLContext) -> None:
        """Load a fresh CRL of this CA into ``ctx`` and check the peer's leaf against it.

        Only leaves issued directly by this CA are checked; OpenSSL rejects every peer
        whose issuer has no CRL loaded once the flag is set.
        """
        with self.crl_pem().tempfile() as crl_file:
            # load_verify_locations(cadata=) reads certificates only; a file also yields CRLs.
            ctx.load_verify_locations(cafile=crl_file)
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF

    def _record(self, cert: x509.Certificate, name: str) -> None:
        self._index.add(
            Entry(
                serial=cert.serial_number,
                name=name,
                role=role_of(cert),
                not_after=cert.not_valid_after_utc.isoformat(),
            )
        )
        self._persist()

    def _check_issued_here(self, cert: x509.Certificate) -> None:
        try:
            cert.verify_directly_issued_by(self.certificate)
        except (ValueError, TypeError, InvalidSignature) as exc:
            issuer = self.certificate.subject.rfc4514_string()
            raise CertsToolError(f"{display_name(cert)!r} was not issued by {issuer}") from exc
