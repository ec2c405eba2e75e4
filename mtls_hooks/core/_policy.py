"""Pin and identity rules: which CA-verified peers are allowed.

A :class:`PeerPolicy` is the union of four kinds of rule; a peer is allowed when any rule
matches its *verified leaf* certificate:

* SPKI pins, ``sha256/<base64>`` (OkHttp/HPKP form) or ``sha256//<base64>`` (curl form);
* certificate fingerprints, hex SHA-256 of the DER certificate, with or without colons;
* SAN rules ``dns:NAME``, ``email:ADDR``, ``uri:URI`` and SPIFFE prefixes
  ``uri:spiffe://trust.domain/path/*``;
* exact subjects ``subject:CN=billing,O=Example`` (RFC 4514).

Policies never replace chain verification; they narrow it. Envoy's docs warn that SAN
matching alone is spoofable without a trusted CA, and OkHttp's CVE-2016-2402 came from
checking pins against an attacker-supplied chain instead of the verified leaf.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.core._identity import PeerIdentity
from mtls_hooks.core._suggest import did_you_mean

__all__ = ["PeerPolicy", "normalize_fingerprint", "normalize_spki_pin"]

_B64_SHA256_LEN = 44  # base64 of 32 bytes, with one '=' of padding
_HEX_SHA256_LEN = 64
_SAN_KINDS = ("dns", "email", "uri", "subject")


def normalize_spki_pin(text: str) -> str:
    """Return ``text`` as a canonical ``sha256/<base64>`` SPKI pin.

    Accepts ``sha256/<b64>``, curl's ``sha256//<b64>`` and a bare 44-character base64
    digest. The prefix is parsed by length, never by stripping slashes: a base64 digest
    may itself begin with ``/`` (about one key in 64).

    Raises:
        ConfigurationError: if ``text`` is not a base64 SHA-256 digest in one of those forms.
    """
    value = text.strip()
    if value.startswith("sha256/"):
        value = value[len("sha256/") :]
        if len(value) == _B64_SHA256_LEN + 1 and value.startswith("/"):
            value = value[1:]  # curl's "sha256//" separator
    if len(value) != _B64_SHA256_LEN:
        raise ConfigurationError(f"not an SPKI pin (want sha256/ + 44 base64 chars): {text!r}")
    try:
        digest = base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ConfigurationError(f"SPKI pin is not valid base64: {text!r}") from exc
    if len(digest) != 32:
        raise ConfigurationError(f"SPKI pin is not a SHA-256 digest: {text!r}")
    return "sha256/" + base64.b64encode(digest).decode("ascii")


def normalize_fingerprint(text: str) -> str:
    """Return a certificate SHA-256 fingerprint as 64 lowercase hex characters.

    Accepts ``AB:CD:...`` (``openssl x509 -fingerprint -sha256``) and plain hex, with an
    optional ``sha256:`` prefix.

    Raises:
        ConfigurationError: if ``text`` is not a SHA-256 fingerprint.
    """
    value = text.strip().lower()
    value = value.removeprefix("sha256:").removeprefix("sha256 fingerprint=")
    value = value.replace(":", "")
    if len(value) != _HEX_SHA256_LEN or any(c not in "0123456789abcdef" for c in value):
        raise ConfigurationError(f"not a SHA-256 certificate fingerprint: {text!r}")
    return value


def _is_fingerprint(text: str) -> bool:
    try:
        normalize_fingerprint(text)
    except ConfigurationError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class _SpiffePrefix:
    trust_domain: str
    path_prefix: str  # "" for the whole trust domain, else "/a/b/" with a trailing slash

    def matches(self, spiffe_id: str) -> bool:
        rest = spiffe_id[len("spiffe://") :]
        domain, _, path = rest.partition("/")
        if domain != self.trust_domain:
            return False
        return ("/" + path).startswith(self.path_prefix) if self.path_prefix else True


def _parse_spiffe_prefix(uri: str) -> _SpiffePrefix:
    body = uri[len("spiffe://") : -len("*")]
    domain, _, path = body.partition("/")
    if not domain or domain != domain.lower():
        raise ConfigurationError(f"SPIFFE trust domain must be non-empty lowercase: {uri!r}")
    prefix = "/" + path if path else ""
    if prefix and not prefix.endswith("/"):
        raise ConfigurationError(f"SPIFFE prefix must end with '/*': {uri!r}")
    return _SpiffePrefix(domain, prefix)


@dataclass(frozen=True, slots=True)
class PeerPolicy:
    """The set of peers allowed past chain verification.

    Build it with :meth:`from_rules` (or directly, with pins in any accepted form); test it
    with :meth:`check` or :meth:`allows`. An empty policy allows nobody unless ``allow_any``
    is set.

    Attributes:
        spki_pins: canonical ``sha256/<base64>`` pins.
        fingerprints: lowercase hex SHA-256 certificate fingerprints.
        dns_names: exact DNS SANs (lowercase).
        emails: exact email SANs.
        uris: exact URI SANs.
        spiffe_prefixes: SPIFFE trust domain + path prefix rules.
        subjects: exact RFC 4514 subjects.
        allow_any: admit every CA-verified peer (explicit opt-in).
    """

    spki_pins: frozenset[str] = frozenset()
    fingerprints: frozenset[str] = frozenset()
    dns_names: frozenset[str] = frozenset()
    emails: frozenset[str] = frozenset()
    uris: frozenset[str] = frozenset()
    spiffe_prefixes: tuple[_SpiffePrefix, ...] = ()
    subjects: frozenset[str] = frozenset()
    allow_any: bool = False
    _pin_bytes: tuple[bytes, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Normalise pins and derive the byte form :meth:`check` compares.

        Runs for every construction (direct, :meth:`from_rules`, :meth:`merged`,
        :func:`dataclasses.replace`), so the compared pins never drift from ``spki_pins``.

        Raises:
            ConfigurationError: on a malformed SPKI pin or fingerprint.
        """
        spki = frozenset(normalize_spki_pin(pin) for pin in self.spki_pins)
        fingerprints = frozenset(normalize_fingerprint(fp) for fp in self.fingerprints)
        # object.__setattr__: the documented way to set fields of a frozen dataclass in
        # __post_init__ (https://docs.python.org/3/library/dataclasses.html#frozen-instances).
        object.__setattr__(self, "spki_pins", spki)
        object.__setattr__(self, "fingerprints", fingerprints)
        object.__setattr__(self, "_pin_bytes", tuple(p.encode("ascii") for p in sorted(spki)))

    @classmethod
    def from_rules(
        cls,
        pins: Iterable[str] = (),
        allow: Iterable[str] = (),
        *,
        allow_any: bool = False,
    ) -> PeerPolicy:
        """Parse pins and identity rules.

        Args:
            pins: SPKI pins and/or certificate fingerprints, in any accepted form.
            allow: identity rules ``dns:``, ``email:``, ``uri:`` (``spiffe://td/path/*`` for a
                prefix) and ``subject:``.
            allow_any: admit every peer the CA vouches for. Off by default.

        Raises:
            ConfigurationError: on a malformed pin or rule, naming the closest valid kind.
        """
        # Sorted by form only: __post_init__ normalises (and rejects) every pin.
        spki: set[str] = set()
        fingerprints: set[str] = set()
        for pin in pins:
            (fingerprints if _is_fingerprint(pin) else spki).add(pin)
        rules: dict[str, set[str]] = {kind: set() for kind in _SAN_KINDS}
        prefixes: list[_SpiffePrefix] = []
        for rule in allow:
            kind, sep, value = rule.partition(":")
            kind = kind.strip().lower()
            value = value.strip()
            if not sep or kind not in rules:
                raise ConfigurationError(
                    f"identity rule {rule!r} must start with one of "
                    f"{', '.join(k + ':' for k in _SAN_KINDS)}{did_you_mean(kind, _SAN_KINDS)}"
                )
            if not value:
                raise ConfigurationError(f"identity rule {rule!r} has an empty value")
            if kind == "uri" and value.startswith("spiffe://") and value.endswith("*"):
                prefixes.append(_parse_spiffe_prefix(value))
            elif kind == "dns":
                rules["dns"].add(value.lower().rstrip("."))
            else:
                rules[kind].add(value)
        return cls(
            spki_pins=frozenset(spki),
            fingerprints=frozenset(fingerprints),
            dns_names=frozenset(rules["dns"]),
            emails=frozenset(rules["email"]),
            uris=frozenset(rules["uri"]),
            spiffe_prefixes=tuple(prefixes),
            subjects=frozenset(rules["subject"]),
            allow_any=allow_any,
        )

    @property
    def is_empty(self) -> bool:
        """True when no rule is configured (and ``allow_any`` is off): nobody is allowed."""
        return not (
            self.allow_any
            or self.spki_pins
            or self.fingerprints
            or self.dns_names
            or self.emails
            or self.uris
            or self.spiffe_prefixes
            or self.subjects
        )

    def check(self, identity: PeerIdentity) -> str | None:
        """Return ``None`` when ``identity`` is allowed, else a one-line reason.

        Pins are compared in constant time; the reason never contains key material.
        """
        if self.allow_any:
            return None
        candidate = identity.spki_pin.encode("ascii")
        # Compare against every pin so timing does not reveal which pin is configured.
        pinned = False
        for pin in self._pin_bytes:
            pinned |= hmac.compare_digest(pin, candidate)
        if pinned or identity.fingerprint in self.fingerprints:
            return None
        if self.dns_names.intersection(identity.dns_names):
            return None
        if self.emails.intersection(identity.emails):
            return None
        if self.subjects and identity.subject in self.subjects:
            return None
        svid = identity.spiffe_id
        for uri in self.uris.intersection(identity.uris):
            # An X509-SVID carries exactly one URI SAN; a certificate with several is not
            # an SVID and must not match a spiffe:// rule (SPIFFE X509-SVID §2).
            if svid is not None or not uri.startswith("spiffe://"):
                return None
        if svid is not None and any(p.matches(svid) for p in self.spiffe_prefixes):
            return None
        return f"{identity.spki_pin} not in pins and no identity rule matches {identity.subject!r}"

    def allows(self, identity: PeerIdentity) -> bool:
        """True when ``identity`` matches at least one rule."""
        return self.check(identity) is None

    def merged(self, other: PeerPolicy) -> PeerPolicy:
        """Return the union of two policies."""
        return PeerPolicy(
            spki_pins=self.spki_pins | other.spki_pins,
            fingerprints=self.fingerprints | other.fingerprints,
            dns_names=self.dns_names | other.dns_names,
            emails=self.emails | other.emails,
            uris=self.uris | other.uris,
            spiffe_prefixes=self.spiffe_prefixes + other.spiffe_prefixes,
            subjects=self.subjects | other.subjects,
            allow_any=self.allow_any or other.allow_any,
        )
