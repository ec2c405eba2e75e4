"""Client certificates forwarded by a TLS-terminating proxy: the header formats we read.

Each parser takes the request's header lines and returns a :class:`ForwardedCert` (the leaf
DER and the untrusted intermediates the proxy passed on), ``None`` when the header is absent,
or raises :class:`ForwardedCertError`, whatever the bytes hold (junk base64, truncated DER,
bad quoting, a header sent twice, a huge value): never ``ValueError`` or ``binascii.Error``.

The formats, and where each comes from:

* ``rfc9440``: ``Client-Cert: :<base64 DER>:`` and ``Client-Cert-Chain: :<b64>:, :<b64>:``,
  RFC 8941 byte sequences (RFC 9440 §2); Cloudflare, GCP and CloudFront emit it. The chain
  header does not repeat the leaf (RFC 9440 §2.3).
* ``xfcc``: Envoy's ``X-Forwarded-Client-Cert``: comma-separated elements, one per proxy
  hop; ``;``-separated ``key=value`` pairs; a value holding ``,;=`` is double-quoted, with
  ``\\"`` for a quote. ``Cert`` (leaf) and ``Chain`` (leaf first) are URL-encoded PEM;
  ``Hash`` is the hex SHA-256 of the leaf DER. The last element is the one our adjacent
  proxy added.
* ``nginx``: ``X-SSL-Client-Cert: $ssl_client_escaped_cert``, URL-encoded PEM (nginx 1.13.5+).
* ``alb``: AWS ALB's ``X-Amzn-Mtls-Clientcert`` (pass-through mode): URL-encoded PEM of the
  chain, leaf first. ``+`` is left unescaped, so it is decoded with ``unquote``, never
  ``unquote_plus`` (which would turn base64's ``+`` into a space).
* ``traefik``: ``X-Forwarded-Tls-Client-Cert`` (``passTLSClientCert: {pem: true}``): each
  certificate's PEM with the BEGIN/END lines and newlines removed, comma-separated, leaf
  first (traefik/traefik ``pkg/middlewares/passtlsclientcert``; releases before v2.x
  query-escaped it, so ``%XX`` is decoded too).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from mtls_hooks.core._errors import VerificationError

__all__ = [
    "HEADER_FORMATS",
    "MAX_CERT_HEADER_BYTES",
    "MAX_CHAIN_CERTS",
    "ForwardedCert",
    "ForwardedCertError",
    "client_cert_header_names",
    "client_cert_headers_in",
    "is_client_cert_header",
    "looks_like_cert_header",
    "parse_forwarded_cert",
]

# One header value: a leaf and a few intermediates as URL-encoded PEM fit in ~12 KiB; a
# bigger value is refused before it is decoded (a 100 KB header costs nothing to refuse).
MAX_CERT_HEADER_BYTES = 32 * 1024
# Certificates in a forwarded chain, leaf included (OpenSSL's default verify depth is 100;
# no real client chain is longer than a handful).
MAX_CHAIN_CERTS = 8

Headers = Sequence[tuple[bytes, bytes]]


class ForwardedCertError(VerificationError):
    """A forwarded client certificate was refused: untrusted peer, bad header, failed check.

    Attributes:
        reason: the refusal code, the same as a refused handshake's where one applies
            (``"no-certificate"``, ``"cert-verify-failed"``, ``"unpinned"``), plus
            ``"untrusted-proxy"`` for a client-certificate header from a peer outside
            ``trusted_proxies``.
        status: the HTTP status to answer with (400, 403 or 431).
        subject: RFC 4514 subject of the certificate, when it could be parsed.
        spki_pin: its ``sha256/<base64>`` pin, when it could be parsed.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str = "cert-verify-failed",
        status: int = 400,
        subject: str = "",
        spki_pin: str = "",
    ) -> None:
        super().__init__(message, reason=reason)
        self.status = status
        self.subject = subject
        self.spki_pin = spki_pin


@dataclass(frozen=True, slots=True)
class ForwardedCert:
    """A certificate as a proxy forwarded it, not verified yet.

    Attributes:
        leaf_der: the client's certificate, DER.
        chain_der: intermediates the proxy passed on (untrusted, nearest first, no leaf).
        source: the header format it was read from.
    """

    leaf_der: bytes
    chain_der: tuple[bytes, ...]
    source: str


# --------------------------------------------------------------------------- decoding


def _malformed(source: str, why: str) -> ForwardedCertError:
    return ForwardedCertError(f"malformed {source} client certificate header: {why}")


def _b64(text: str, source: str) -> bytes:
    # Strict: the stdlib's b64decode without validate=True silently skips junk characters.
    compact = "".join(text.split())
    if not compact:
        raise _malformed(source, "empty certificate")
    compact += "=" * (-len(compact) % 4)  # RFC 8941 §4.2.7: parsers accept missing padding
    try:
        der = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _malformed(source, "certificate is not valid base64") from exc
    if not der.startswith(b"\x30"):  # a DER SEQUENCE; everything else is certainly junk
        raise _malformed(source, "certificate is not DER")
    return der


_PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL)


def _pem_certs(text: str, source: str) -> list[bytes]:
    blocks = _PEM_BLOCK.findall(text)
    if not blocks:
        raise _malformed(source, "no PEM certificate in it")
    if _PEM_BLOCK.sub("", text).strip():
        raise _malformed(source, "text outside the PEM certificates")
    return [_b64(block, source) for block in blocks]


def _ascii(value: bytes, source: str) -> str:
    try:
        return value.decode("ascii")
    except UnicodeDecodeError as exc:
        raise _malformed(source, "non-ASCII bytes") from exc


def _chain(certs: list[bytes], source: str, leaf: bytes | None = None) -> ForwardedCert:
    """Build the result from ``certs`` (leaf first unless ``leaf`` is given separately)."""
    if leaf is None:
        leaf, rest = certs[0], certs[1:]
    else:
        rest = certs[1:] if certs and certs[0] == leaf else certs
    if 1 + len(rest) > MAX_CHAIN_CERTS:
        raise _malformed(source, f"more than {MAX_CHAIN_CERTS} certificates")
    return ForwardedCert(leaf, tuple(rest), source)


# --------------------------------------------------------------------------- formats


def _rfc9440(values: dict[str, list[bytes]]) -> ForwardedCert | None:
    source = "rfc9440"
    leaf_values = values.get("client-cert", [])
    if not leaf_values:
        if values.get("client-cert-chain"):
            raise _malformed(source, "Client-Cert-Chain without Client-Cert")
        return None
    if len(leaf_values) > 1:
        raise _malformed(source, "Client-Cert sent more than once")
    leaf = _sf_binary(_ascii(leaf_values[0], source).strip(" \t"), source)
    # A List may be split over several field lines (RFC 8941 §3.1): join them with commas.
    chain_text = ",".join(_ascii(v, source) for v in values.get("client-cert-chain", []))
    members = [m.strip(" \t") for m in chain_text.split(",")] if chain_text.strip() else []
    # RFC 8941 list members may carry parameters (";key=value"); none is defined here.
    chain = [_sf_binary(m.partition(";")[0].strip(" \t"), source) for m in members]
    return _chain([leaf, *chain], source)


def _sf_binary(item: str, source: str) -> bytes:
    if len(item) < 2 or item[0] != ":" or item[-1] != ":":
        raise _malformed(source, "not a structured-field byte sequence ':base64:'")
    body = item[1:-1]
    if not re.fullmatch(r"[A-Za-z0-9+/]*=*", body):
        raise _malformed(source, "byte sequence holds characters outside base64")
    return _b64(body, source)


def _xfcc(values: dict[str, list[bytes]]) -> ForwardedCert | None:
    source = "xfcc"
    raw = values.get("x-forwarded-client-cert", [])
    if not raw:
        return None
    if len(raw) > 1:
        raise _malformed(source, "X-Forwarded-Client-Cert sent more than once")
    elements = _split_quoted(_ascii(raw[0], source), ",", source)
    pairs = _xfcc_pairs(elements[-1], source)  # the element our adjacent proxy appended
    certs = pairs.get("cert", [])
    chains = pairs.get("chain", [])
    if len(certs) > 1 or len(chains) > 1 or len(pairs.get("hash", [])) > 1:
        raise _malformed(source, "Cert, Chain or Hash repeated in one element")
    if not certs and not chains:
        return None
    chain = _pem_certs(unquote(chains[0]), source) if chains else []
    leaf = _pem_certs(unquote(certs[0]), source) if certs else chain[:1]
    if len(leaf) != 1:
        raise _malformed(source, "Cert holds more than one certificate")
    if chain and chain[0] != leaf[0]:
        raise _malformed(source, "Chain does not start with the Cert leaf")
    hashes = pairs.get("hash", [])
    if hashes and hashes[0].lower() != hashlib.sha256(leaf[0]).hexdigest():
        raise _malformed(source, "Hash does not match the certificate")
    return _chain(chain, source, leaf=leaf[0])


def _split_quoted(text: str, separator: str, source: str) -> list[str]:
    """Split on ``separator`` outside double quotes; ``\\"`` inside quotes is a quote."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    index = 0
    while index < len(text):
        char = text[index]
        if quoted and char == "\\" and index + 1 < len(text):
            current.append(text[index : index + 2])
            index += 2
            continue
        if char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            index += 1
            continue
        current.append(char)
        index += 1
    if quoted:
        raise _malformed(source, "unbalanced double quote")
    parts.append("".join(current))
    return parts


def _xfcc_pairs(element: str, source: str) -> dict[str, list[str]]:
    pairs: dict[str, list[str]] = {}
    for pair in _split_quoted(element, ";", source):
        if not pair.strip():
            continue
        key, sep, value = pair.partition("=")
        key = key.strip().lower()
        if not sep or not re.fullmatch(r"[a-z]+", key):
            raise _malformed(source, f"not a key=value pair: {pair[:40]!r}")
        value = value.strip()
        if value.startswith('"'):
            if len(value) < 2 or not value.endswith('"'):
                raise _malformed(source, "unterminated quoted value")
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        elif '"' in value:
            raise _malformed(source, "stray double quote in a value")
        pairs.setdefault(key, []).append(value)
    return pairs


def _single(values: dict[str, list[bytes]], name: str, source: str) -> str | None:
    raw = values.get(name, [])
    if not raw:
        return None
    if len(raw) > 1:
        raise _malformed(source, f"{name} sent more than once")
    text = _ascii(raw[0], source)
    # A proxy with no certificate to pass may still set the header, empty.
    return text if text.strip() else None


def _nginx(values: dict[str, list[bytes]]) -> ForwardedCert | None:
    text = _single(values, "x-ssl-client-cert", "nginx")
    return None if text is None else _chain(_pem_certs(unquote(text), "nginx"), "nginx")


def _alb(values: dict[str, list[bytes]]) -> ForwardedCert | None:
    text = _single(values, "x-amzn-mtls-clientcert", "alb")
    # unquote, not unquote_plus: ALB leaves "+" unescaped and it is a base64 character.
    return None if text is None else _chain(_pem_certs(unquote(text), "alb"), "alb")


def _traefik(values: dict[str, list[bytes]]) -> ForwardedCert | None:
    source = "traefik"
    text = _single(values, "x-forwarded-tls-client-cert", source)
    if text is None:
        return None
    certs = []
    for item in text.split(","):
        body = unquote(item).strip()
        if "-----BEGIN" in body:
            certs.extend(_pem_certs(body, source))
        else:
            certs.append(_b64(body, source))
    return _chain(certs, source)


_Parser = Callable[[dict[str, list[bytes]]], ForwardedCert | None]
_PARSERS: dict[str, tuple[_Parser, tuple[str, ...]]] = {
    "rfc9440": (_rfc9440, ("client-cert", "client-cert-chain")),
    "xfcc": (_xfcc, ("x-forwarded-client-cert",)),
    "nginx": (_nginx, ("x-ssl-client-cert",)),
    "alb": (_alb, ("x-amzn-mtls-clientcert",)),
    "traefik": (_traefik, ("x-forwarded-tls-client-cert",)),
}
#: The ``client_cert_header`` values, i.e. the formats a proxy can forward a certificate in.
HEADER_FORMATS: tuple[str, ...] = tuple(_PARSERS)


def client_cert_header_names(header_format: str) -> tuple[str, ...]:
    """The lowercase header names ``header_format`` reads, e.g. ``("x-ssl-client-cert",)``.

    Raises:
        KeyError: for an unknown format (the configuration refuses those first).
    """
    return _PARSERS[header_format][1]


def parse_forwarded_cert(header_format: str, headers: Headers) -> ForwardedCert | None:
    """Read the forwarded certificate from ASGI header lines (lowercase names, raw values).

    Args:
        header_format: one of :data:`HEADER_FORMATS`.
        headers: the request's ``(name, value)`` pairs, as in an ASGI scope.

    Returns:
        The leaf and chain as forwarded, or ``None`` when the format's header is absent or
        empty.

    Raises:
        ForwardedCertError: a value over :data:`MAX_CERT_HEADER_BYTES` (status 431), a header
            sent twice, bad quoting, base64 or PEM framing (status 400).
    """
    parser, names = _PARSERS[header_format]
    wanted = {name.encode("ascii") for name in names}
    values: dict[str, list[bytes]] = {}
    for name, value in headers:
        lowered = name.lower()
        if lowered in wanted:
            if len(value) > MAX_CERT_HEADER_BYTES:
                raise ForwardedCertError(
                    f"{lowered.decode()} is {len(value)} bytes; the limit is "
                    f"{MAX_CERT_HEADER_BYTES}",
                    status=431,
                )
            values.setdefault(lowered.decode("ascii"), []).append(value)
    return parser(values) if values else None


# --------------------------------------------------------------------------- spoofing

# Header names (lowercase, "-" and "_" removed) that carry a client certificate or a
# verdict about one in some stack: RFC 9440, Envoy, nginx/Apache conventions
# (X-SSL-Client-Cert, X-SSL-Client-Verify, X-SSL-Client-S-DN...), AWS ALB, Traefik,
# Cloudflare (Cf-Client-Cert-*), GCP (X-Client-Cert-*). CVE-2026-46579 and CVE-2026-35616
# both came from such a header sent by the client itself.
_SPOOF_MARKERS = (
    "clientcert",
    "sslclient",
    "tlsclient",
    "clientverify",
    "sslverify",
    "sslcert",
    "clientdn",
    "clientsdn",
    "clientidn",
    "clientsubject",
    "clientissuer",
    "clientserial",
    "clientfingerprint",
    "mtls",
)
_SPOOF_EXACT = frozenset({"xfcc", "xforwardedclientcert", "sslverified", "xverified"})


def is_client_cert_header(name: bytes | str) -> bool:
    """True when ``name`` looks like any stack's client-certificate or verify header.

    Case, ``-`` and ``_`` are ignored: ``X-SSL-Client-Cert``, ``x_ssl_client_cert`` and
    ``XSSLCLIENTCERT`` are the same header to a stack that normalises names (nginx drops
    underscore names by default; others map ``_`` to ``-``).
    """
    return looks_like_cert_header(name if isinstance(name, bytes) else name.encode("latin-1"))


# Header names repeat from request to request: each is classified once (bounded).
@functools.lru_cache(maxsize=4096)
def looks_like_cert_header(name: bytes) -> bool:
    """:func:`is_client_cert_header` for a raw header name, cached (the per-request form)."""
    compact = name.decode("latin-1").lower().replace("-", "").replace("_", "")
    return compact in _SPOOF_EXACT or any(marker in compact for marker in _SPOOF_MARKERS)


def client_cert_headers_in(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """The names of every client-certificate-like header in ``headers``, as sent."""
    return [name.decode("latin-1") for name, _ in headers if is_client_cert_header(name)]
