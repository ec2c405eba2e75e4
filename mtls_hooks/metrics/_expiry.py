"""Certificate and CRL expiry: timestamps for the metrics, and alarms in the log.

At start-up and then daily, every configured certificate (the server's, each client CA, the
sender's client certificate) and every CRL's ``nextUpdate`` is compared with the clock:

* within ``warn_within_s`` (30 days by default): a WARNING line;
* within ``error_within_s`` (7 days) or already past: an ERROR line.

An expired CRL makes OpenSSL refuse every client of its CA, and an expired server
certificate every sender: both fail closed, so the alarm has to come before the date. The
same dates are exported as ``mtls_hooks_certificate_expiry_timestamp_seconds`` and
``mtls_hooks_crl_next_update_timestamp_seconds`` for alert rules
(``examples/monitoring/alerts.yml``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from cryptography import x509
from cryptography.x509.oid import NameOID

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.metrics._registry import current_metrics

__all__ = [
    "DAY_S",
    "Expiry",
    "ExpiryAlarm",
    "certificate_expiries",
    "crl_expiry",
    "server_expiries",
]

logger = logging.getLogger("mtls_hooks.expiry")

DAY_S: Final = 86_400.0
_NAME_MAX: Final = 128  # label values stay short whatever a subject holds


@dataclass(frozen=True, slots=True)
class Expiry:
    """One date to watch.

    Attributes:
        kind: ``"certificate"`` (its notAfter) or ``"crl"`` (its nextUpdate).
        role: ``server``, ``client_ca``, ``sender_client`` or ``crl``.
        name: the certificate's subject CN (or whole subject), or the CRL's issuer: from
            configuration, never from a peer.
        at_s: the date as a Unix timestamp.
    """

    kind: Literal["certificate", "crl"]
    role: str
    name: str
    at_s: float


def _display(name: x509.Name) -> str:
    common = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    text = str(common[0].value) if common else name.rfc4514_string()
    return text[:_NAME_MAX] or "(empty subject)"


def _read(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from exc


def certificate_expiries(role: str, path: str | Path, *, leaf_only: bool = False) -> list[Expiry]:
    """Read the notAfter of every certificate in a PEM file (or of its first, the leaf).

    Raises:
        ConfigurationError: unreadable file or no PEM certificate in it.
    """
    try:
        certs = x509.load_pem_x509_certificates(_read(path))
    except ValueError as exc:
        raise ConfigurationError(f"{path} holds no readable PEM certificate") from exc
    if leaf_only:
        certs = certs[:1]
    return [
        Expiry("certificate", role, _display(c.subject), c.not_valid_after_utc.timestamp())
        for c in certs
    ]


def crl_expiry(path: str | Path) -> Expiry:
    """Read a CRL's nextUpdate (PEM or DER). A CRL without one never expires: +inf.

    Raises:
        ConfigurationError: unreadable or malformed CRL.
    """
    data = _read(path)
    try:
        crl = (
            x509.load_pem_x509_crl(data)
            if data.lstrip().startswith(b"-----")
            else x509.load_der_x509_crl(data)
        )
    except ValueError as exc:
        raise ConfigurationError(f"{path} is not a readable CRL") from exc
    next_update = crl.next_update_utc
    at_s = float("inf") if next_update is None else next_update.timestamp()
    return Expiry("crl", "crl", _display(crl.issuer), at_s)


class ExpiryAlarm:
    """Check a set of dates now and then, set their gauges, and log what is close.

    Args:
        source: returns the dates to watch; called at each check, so a reload that changed
            the certificates is seen by the next check.
        warn_within_s: log a WARNING when a date is this close.
        error_within_s: log an ERROR when a date is this close, or past.
        clock: the wall clock, ``time.time`` by default (injected in tests).

    Raises:
        ConfigurationError: ``error_within_s`` larger than ``warn_within_s``, or negative.
    """

    def __init__(
        self,
        source: Callable[[], Iterable[Expiry]],
        *,
        warn_within_s: float = 30 * DAY_S,
        error_within_s: float = 7 * DAY_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 <= error_within_s <= warn_within_s:
            raise ConfigurationError(
                "expiry alarms need 0 <= error window <= warning window "
                f"(got {error_within_s / DAY_S:g} and {warn_within_s / DAY_S:g} days)"
            )
        self._source = source
        self.warn_within_s = warn_within_s
        self.error_within_s = error_within_s
        self._clock = clock

    def check(self) -> list[tuple[int, Expiry]]:
        """Check every date once: set the gauges, log the close ones.

        Returns:
            ``(logging level, expiry)`` for each date that was logged.
        """
        now = self._clock()
        metrics = current_metrics()
        logged: list[tuple[int, Expiry]] = []
        for expiry in self._source():
            if metrics is not None:
                if expiry.kind == "crl":
                    metrics.crl_next_update.child(expiry.name).set(expiry.at_s)
                else:
                    metrics.certificate_expiry.child(expiry.role, expiry.name).set(expiry.at_s)
            left_s = expiry.at_s - now
            if left_s > self.warn_within_s:
                continue
            level = logging.ERROR if left_s <= self.error_within_s else logging.WARNING
            event = "expired" if left_s <= 0 else "expiring"
            when = dt.datetime.fromtimestamp(expiry.at_s, dt.UTC).isoformat(timespec="seconds")
            logger.log(
                level,
                'event=%s_%s role=%s name="%s" at=%s days_left=%.1f',
                expiry.kind,
                event,
                expiry.role,
                expiry.name.replace('"', "'"),
                when,
                left_s / DAY_S,
            )
            logged.append((level, expiry))
        return logged

    async def run(
        self,
        *,
        interval_s: float = DAY_S,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        """Check at once, then every ``interval_s``, until cancelled.

        A check that fails (a file being rotated, say) is logged and retried next time: the
        alarm must never take the server down.
        """
        while True:
            try:
                self.check()
            except ConfigurationError as exc:
                logger.warning("event=expiry_check_failed detail=%s", exc)
            await sleep(interval_s)


def server_expiries(
    certfile: str | None,
    client_ca: Sequence[str],
    crl: Sequence[str],
    *,
    ca_role: str = "client_ca",
) -> Callable[[], list[Expiry]]:
    """Return a source of a server's dates: its leaf (if it serves TLS), each CA, each CRL."""

    def source() -> list[Expiry]:
        found = [] if certfile is None else certificate_expiries("server", certfile, leaf_only=True)
        for bundle in client_ca:
            found += certificate_expiries(ca_role, bundle)
        found += [crl_expiry(path) for path in crl]
        return found

    return source
