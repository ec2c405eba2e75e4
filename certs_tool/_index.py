"""The CA's small bookkeeping: issued serials, their names, revocations and the CRL number.

In memory for every CA; mirrored to ``index.json`` in a CA directory so that
``certs-tool revoke NAME`` can work in a later process.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from certs_tool._blob import Blob
from certs_tool._errors import CertsToolError

__all__ = ["Entry", "Index"]

_VERSION = 1


@dataclass(slots=True)
class Entry:
    """One issued certificate.

    Attributes:
        serial: the certificate serial number.
        name: the common name, or the first SAN when there is none.
        role: ``"server"``, ``"client"``, ``"server+client"`` or ``"ca"``.
        not_after: end of validity, ISO 8601 UTC.
        revoked_at: revocation time, ISO 8601 UTC, or None.
    """

    serial: int
    name: str
    role: str
    not_after: str
    revoked_at: str | None = None


@dataclass(slots=True)
class Index:
    """Issued and revoked certificates of one CA, plus the last CRL number used."""

    entries: list[Entry] = field(default_factory=list)
    crl_number: int = 0

    def add(self, entry: Entry) -> None:
        """Record an issued certificate."""
        self.entries.append(entry)

    def find(self, name_or_serial: str) -> list[Entry]:
        """Return the entries whose name equals the argument, or whose serial it spells.

        A serial may be given in decimal or in hex with a ``0x`` prefix or colons (the
        ``openssl x509 -serial`` form).
        """
        serial = _parse_serial(name_or_serial)
        return [e for e in self.entries if e.name == name_or_serial or e.serial == serial]

    def revoke(self, serial: int, when: dt.datetime) -> Entry:
        """Mark ``serial`` revoked at ``when`` (kept if already revoked) and return its entry.

        A serial this index never saw is recorded too: the CA may have issued it before it
        had an index.
        """
        for entry in self.entries:
            if entry.serial == serial:
                break
        else:
            entry = Entry(serial=serial, name=f"serial {serial:x}", role="unknown", not_after="")
            self.entries.append(entry)
        if entry.revoked_at is None:
            entry.revoked_at = when.isoformat()
        return entry

    def revoked(self) -> list[tuple[int, dt.datetime]]:
        """Return ``(serial, revocation time)`` for every revoked certificate."""
        return [
            (e.serial, dt.datetime.fromisoformat(e.revoked_at))
            for e in self.entries
            if e.revoked_at is not None
        ]

    def next_crl_number(self) -> int:
        """Advance and return the CRL number (RFC 5280 §5.2.3: monotonically increasing)."""
        self.crl_number += 1
        return self.crl_number

    def to_blob(self) -> Blob:
        """Serialise as JSON."""
        doc = {
            "version": _VERSION,
            "crl_number": self.crl_number,
            "issued": [asdict(e) for e in self.entries],
        }
        return Blob(json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n")

    @classmethod
    def load(cls, path: Path) -> Index:
        """Read ``index.json``; a missing file is an empty index.

        Raises:
            CertsToolError: if the file is unreadable or not an index.
        """
        if not path.exists():
            return cls()
        try:
            doc = json.loads(Blob.from_path(path).bytes())
            entries = [Entry(**item) for item in doc["issued"]]
            return cls(entries=entries, crl_number=int(doc["crl_number"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise CertsToolError(f"{path} is not a certs-tool index: {exc}") from exc


def _parse_serial(text: str) -> int | None:
    value = text.strip().lower()
    try:
        if value.startswith("0x"):
            return int(value[2:], 16)
        if ":" in value:
            return int(value.replace(":", ""), 16)
        return int(value, 10)
    except ValueError:
        return None
