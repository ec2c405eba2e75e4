"""Subject alternative names: detecting each value's type and checking it.

One string per SAN; its type comes from its shape:

* an IPv4 or IPv6 address → ``IPAddress``;
* ``scheme://...`` → ``UniformResourceIdentifier`` (``spiffe://`` IDs are checked against
  the SPIFFE ID rules);
* ``local@domain`` → ``RFC822Name``;
* anything else → ``DNSName``: lowercased, IDNs converted to A-labels, and a wildcard
  allowed only as the whole leftmost label (RFC 6125 §6.4.3).
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Iterable

from cryptography import x509

from certs_tool._errors import CertsToolError

__all__ = ["check_svid_uris", "parse_san", "parse_sans"]

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_URI_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
# SPIFFE ID spec §2.1/§2.2: trust domain [a-z0-9.-_], path segments [a-zA-Z0-9.-_].
_SPIFFE_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")
_SPIFFE_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
_DNS_MAX_LEN = 253
_SPIFFE_MAX_LEN = 2048


def parse_san(value: str) -> x509.GeneralName:
    """Return the SAN general name for one value, its type detected from its shape.

    Raises:
        CertsToolError: if the value is empty or not a valid name of the detected type.
    """
    text = value.strip()
    if not text or text != value or any(ch.isspace() for ch in text):
        raise CertsToolError(f"bad SAN {value!r}: empty or contains whitespace")
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    if _URI_SCHEME.match(text):
        return x509.UniformResourceIdentifier(_check_uri(text))
    if "@" in text:
        return x509.RFC822Name(_check_email(text))
    return x509.DNSName(_dns_a_label(text))


def parse_sans(values: Iterable[str]) -> list[x509.GeneralName]:
    """Parse many SAN values, dropping exact duplicates and keeping the order.

    Raises:
        CertsToolError: if any value is invalid, or the URIs break the X509-SVID rules.
    """
    names: list[x509.GeneralName] = []
    for value in values:
        name = parse_san(value)
        if name not in names:
            names.append(name)
    check_svid_uris(names)
    return names


def check_svid_uris(names: Iterable[x509.GeneralName]) -> None:
    """Enforce X509-SVID §2: a certificate with a SPIFFE ID has exactly one URI SAN.

    Raises:
        CertsToolError: if a SPIFFE ID shares the certificate with other URI SANs.
    """
    uris = [n.value for n in names if isinstance(n, x509.UniformResourceIdentifier)]
    if any(uri.startswith("spiffe://") for uri in uris) and len(uris) != 1:
        raise CertsToolError(
            f"an X509-SVID must carry exactly one URI SAN, got {len(uris)}: {', '.join(uris)}"
        )


def _dns_a_label(text: str) -> str:
    name = text.lower().removesuffix(".")
    wildcard = name.startswith("*.")
    body = name[2:] if wildcard else name
    try:
        # IDNA 2003 via the stdlib codec; it maps U-labels to xn-- A-labels.
        ascii_name = body.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise CertsToolError(f"bad SAN {text!r}: not a valid DNS name ({exc})") from exc
    labels = ascii_name.split(".")
    if len(ascii_name) > _DNS_MAX_LEN or not all(_LABEL.match(label) for label in labels):
        raise CertsToolError(f"bad SAN {text!r}: not a valid DNS name")
    if wildcard and len(labels) < 2:
        # "*.com" would match a whole public suffix; CAs refuse it (CA/B BR §3.2.2.6).
        raise CertsToolError(f"bad SAN {text!r}: a wildcard needs at least two labels after it")
    return ("*." if wildcard else "") + ascii_name


def _check_email(text: str) -> str:
    local, _, domain = text.rpartition("@")
    if not local or "@" in local:
        raise CertsToolError(f"bad SAN {text!r}: not an email address")
    return f"{local}@{_dns_a_label(domain)}"


def _check_uri(text: str) -> str:
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme.lower() == "spiffe":
        _check_spiffe_id(text, parsed)
    elif not parsed.netloc:
        raise CertsToolError(f"bad SAN {text!r}: a URI needs a host")
    return text


def _check_spiffe_id(text: str, parsed: urllib.parse.SplitResult) -> None:
    # SPIFFE ID spec §2: lowercase scheme and trust domain, no port, userinfo, query or
    # fragment, and no empty, "." or ".." path segments or trailing slash.
    problems = []
    if not text.startswith("spiffe://"):
        problems.append("the scheme must be lowercase 'spiffe'")
    if parsed.query or parsed.fragment or "?" in text or "#" in text:
        problems.append("no query or fragment allowed")
    if "@" in parsed.netloc or ":" in parsed.netloc:
        problems.append("no userinfo or port allowed")
    if not _SPIFFE_TRUST_DOMAIN.match(parsed.netloc):
        problems.append("the trust domain must be non-empty [a-z0-9._-]")
    if parsed.path:
        segments = parsed.path.split("/")[1:]
        if any(s in ("", ".", "..") or not _SPIFFE_SEGMENT.match(s) for s in segments):
            problems.append("path segments must be non-empty [A-Za-z0-9._-], not '.' or '..'")
    if len(text) > _SPIFFE_MAX_LEN:
        problems.append("longer than 2048 bytes")
    if problems:
        raise CertsToolError(f"bad SPIFFE ID {text!r}: {'; '.join(problems)}")
