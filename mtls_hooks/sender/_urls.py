"""Which URLs a webhook can be sent to: checked once per URL, before anything is sent.

Both twins' HTTP libraries refuse some hosts with their own exceptions, or worse, take them to
DNS and retry a connect error until the deadline. :func:`url_problem` says in one line what
makes a URL unfit, so a sender raises a ``ConfigurationError`` instead. Its answers are cached:
a sender posts to few URLs, many times.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Final
from urllib.parse import urlsplit

import idna

from mtls_hooks.sender._results import redact_url

__all__ = ["url_problem"]

_IPV4_LIKE: Final = re.compile(r"[0-9]+(?:\.[0-9]+){3}")
_HOST_LABEL: Final = re.compile(r"[a-z0-9_-]{1,63}")  # urlsplit lower-cases the host


def _host_problem(host: str) -> str | None:
    """Say why neither twin could connect to ``host``, or return ``None``.

    The twins' libraries refuse such hosts with their own exceptions, or worse, take them
    to DNS and retry a connect error until the deadline: httpx encodes a name with IDNA
    2008 (the ``idna`` package, its dependency and yarl's) and decodes ``xn--`` labels;
    the socket module encodes with the ``idna`` codec, which refuses an empty or long label.
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return None
    if ":" in host:
        return "is not an IPv6 address"
    if _IPV4_LIKE.fullmatch(host):
        return "is not an IPv4 address"
    name = host.removesuffix(".")  # one trailing dot: a fully qualified name
    if not name.isascii():
        try:
            name = idna.encode(name).decode("ascii")
        except ValueError as exc:  # idna.IDNAError is a UnicodeError
            return f"is not an internationalised domain name ({exc})"
    if len(name) > 253:
        return "is longer than the 253 characters of a DNS name"
    for label in name.split("."):
        if not _HOST_LABEL.fullmatch(label):
            return "needs labels of 1 to 63 letters, digits, '-' or '_', between single dots"
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except ValueError as exc:
                return f"has a malformed punycode label {label!r} ({exc})"
    return None


@functools.lru_cache(maxsize=1024)  # senders post to few URLs, many times
def url_problem(url: str) -> str | None:
    """Say what makes ``url`` unfit for a webhook, or return ``None`` when it is fit.

    Userinfo is allowed (the HTTP libraries send it as Basic auth); no message shows its
    password.
    """
    shown = redact_url(url)
    if not url.isprintable():
        # httpx refuses control characters with InvalidURL, encoding fails on a lone
        # surrogate, and a CR LF must never reach a request line.
        return f"webhook URL {shown!r} holds a control or unprintable character"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError as exc:
        return f"webhook URL {shown!r} is malformed: {exc}"
    if parts.scheme != "https" or not parts.hostname:
        return f"webhook URL must be https://host/...: {shown!r}"
    host_problem = _host_problem(parts.hostname)
    if host_problem is not None:
        return f"webhook URL {shown!r}: host {parts.hostname!r} {host_problem}"
    # "https://host:/x": urlsplit and httpx both read an empty port as the default, 443,
    # which silently sends elsewhere than a URL with a lost port number meant.
    if parts.netloc.endswith(":"):
        return f"webhook URL {shown!r} has an empty port: give one (https://host:8443/...) or none"
    if port == 0:
        return f"webhook URL {shown!r}: port 0 cannot be connected to"
    return None
