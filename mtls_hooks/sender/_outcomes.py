"""What one delivery attempt's outcome means: an answer or a failure, as :class:`AttemptFailed`.

Both senders call these two functions and nothing else to judge a try, so httpx, aiohttp,
ssl and OS exceptions are read in one place. Classification follows the Standard Webhooks
delivery guidance:

* 2xx is success; 3xx is a failure and never followed; 410 means "endpoint gone";
* 408, 425, 429, 500, 502, 503 and 504 are retried, honouring ``Retry-After``;
* every other status is final;
* connection failures, resets and timeouts are retried;
* an untrusted or unpinned receiver certificate, or a receiver refusing ours with a TLS
  alert, is final: no retry can fix a certificate.
"""

from __future__ import annotations

import errno
import json
import re
import ssl
from collections.abc import Iterator, Mapping
from typing import Final

import aiohttp
import httpx

from mtls_hooks.core._errors import PinError
from mtls_hooks.core._problem import PROBLEM_CONTENT_TYPE
from mtls_hooks.sender._results import redact_url
from mtls_hooks.sender._retry import RETRYABLE_STATUS_CODES, AttemptFailed, parse_retry_after

__all__ = ["ANSWER_KEEP_BYTES", "classify_exception", "classify_status"]

_TAG: Final = re.compile(r"<[^>]*>")
_SNIPPET_CHARS: Final = 200
# A refusal's problem body is a few hundred bytes; a larger one is not read as JSON.
_PROBLEM_MAX_BYTES: Final = 16 * 1024
#: How much of an answer's body the senders keep: all that the problem parser and the
#: snippet read. Receivers may be third parties; the rest is never read (nor pooled).
ANSWER_KEEP_BYTES: Final = _PROBLEM_MAX_BYTES
_PROBLEM_DETAIL_CHARS: Final = 400
# TLS alerts by which a receiver refuses *our* certificate.
_CLIENT_CERT_ALERTS: Final = (
    "ALERT_CERTIFICATE",  # _EXPIRED, _REVOKED, _UNKNOWN, _REQUIRED
    "ALERT_BAD_CERTIFICATE",
    "ALERT_UNKNOWN_CA",
    "ALERT_ACCESS_DENIED",
    "ALERT_HANDSHAKE_FAILURE",
)
_DROPPED_HINT: Final = (
    " (if every attempt ends so, the receiver may be refusing our client certificate: "
    "TLS 1.3 shows that only as a dropped connection)"
)


def _one_line(text: str, limit: int) -> str:
    # The receiver writes this text into our error message and logs: no newlines, no
    # terminal escapes, bounded length, whatever it sent.
    printable = "".join(char if char.isprintable() else " " for char in text[: limit * 4])
    return " ".join(printable.split())[:limit]


def _snippet(body: bytes) -> str:
    # Error pages are often HTML (nginx's "<h1>410 Gone</h1>"): keep the words, not the tags.
    text = _TAG.sub(" ", body[: _SNIPPET_CHARS * 4].decode("utf-8", "replace"))
    return _one_line(text, _SNIPPET_CHARS)


def _problem(headers: Mapping[str, str], body: bytes) -> tuple[str, str] | None:
    """Read an RFC 9457 problem body as ``(title, "reason: detail")``, or ``None``.

    Our receiver refuses every request this way; its ``detail`` (and ``reason`` extension
    member) says why far better than a snippet of raw JSON. Anything malformed, oversized
    or without a string ``detail`` is ``None``: the caller falls back to the snippet.
    """
    media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != PROBLEM_CONTENT_TYPE or len(body) > _PROBLEM_MAX_BYTES:
        return None
    try:
        problem = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(problem, dict) or not isinstance(problem.get("detail"), str):
        return None
    title, reason = problem.get("title"), problem.get("reason")
    detail = problem["detail"]
    if isinstance(reason, str) and reason.strip():
        detail = f"{reason}: {detail}"
    return (
        _one_line(title, _SNIPPET_CHARS) if isinstance(title, str) else "",
        _one_line(detail, _PROBLEM_DETAIL_CHARS),
    )


def classify_status(
    status: int, headers: Mapping[str, str], body: bytes, *, url: str, now: float
) -> AttemptFailed | None:
    """Judge an HTTP answer.

    Args:
        status: the HTTP status.
        headers: the answer's headers (case-insensitive mapping).
        body: the start of the answer's body (the senders keep ``ANSWER_KEEP_BYTES``): an
            RFC 9457 problem's ``reason`` and ``detail``, or else a snippet of it, explains a
            refusal.
        url: where the request went, for the message.
        now: the wall clock, to read a ``Retry-After`` HTTP-date.

    Returns:
        ``None`` for a 2xx, else the failure to raise.
    """
    if 200 <= status < 300:
        return None
    retryable = status in RETRYABLE_STATUS_CODES
    retry_after_s = None
    problem = _problem(headers, body)
    title, detail = problem if problem is not None else ("", _snippet(body))
    if retryable:
        retry_after_s = parse_retry_after(headers.get("retry-after"), now=now)
        if retry_after_s is not None:
            detail = f"Retry-After {headers.get('retry-after')}"
    if status == 410:
        kind, message = "gone", f"endpoint gone (410) at {redact_url(url)}: stop sending to it"
    elif 300 <= status < 400:
        kind = "redirect"
        message = (
            f"receiver answered {status} (Location: {redact_url(headers.get('location', '-'))}); "
            "redirects are never followed: update the endpoint URL"
        )
    else:
        kind = "status"
        answered = f"receiver answered {status} {title}" if title else f"receiver answered {status}"
        message = answered + (f": {detail}" if detail else "")
    return AttemptFailed(
        message,
        retryable=retryable,
        kind=kind,
        status_code=status,
        retry_after_s=retry_after_s,
        detail=detail,
    )


def _cause_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _dropped(exc: BaseException) -> bool:
    """True for a connection closed or reset under us, however the library words it."""
    # aiohttp words a close (our receiver's close_notify under TLS 1.3) that lands while it
    # still writes the body as ClientOSError "Can not write request body"; its connect
    # failures (ClientConnectorError) are judged before this is asked.
    if isinstance(
        exc, httpx.RemoteProtocolError | aiohttp.ServerDisconnectedError | aiohttp.ClientOSError
    ):
        return True
    # The TLS session ended under us: a close_notify (SSLZeroReturnError) or a close without
    # one (SSLEOFError), whichever the read or write met first.
    if isinstance(exc, ssl.SSLZeroReturnError | ssl.SSLEOFError):
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE)


def _tls_failure(inner: BaseException, trust: str) -> AttemptFailed | None:
    name = type(inner).__name__
    if isinstance(inner, PinError):
        message = f"server SPKI {inner.spki_pin} not in pins (subject {inner.subject!r})"
        return AttemptFailed(message, retryable=False, kind="tls", error=name)
    if isinstance(inner, ssl.SSLCertVerificationError):
        why = inner.verify_message or inner.reason or str(inner)
        # OpenSSL says "Hostname mismatch" for a DNS name, "IP address mismatch" for an IP.
        if any(m in str(why).lower() for m in ("hostname", "ip address mismatch")):
            message = f"server certificate does not match the URL host ({why})"
        else:
            message = f"server certificate not trusted by {trust} ({why})"
        return AttemptFailed(message, retryable=False, kind="tls", error=name)
    reason = str(getattr(inner, "reason", None) or inner)
    if isinstance(inner, ssl.SSLError) and any(a in reason.upper() for a in _CLIENT_CERT_ALERTS):
        message = f"receiver refused our client certificate ({reason.lower().replace('_', ' ')})"
        return AttemptFailed(message, retryable=False, kind="tls", error=name)
    return None


def classify_exception(exc: BaseException, *, trust: str) -> AttemptFailed:
    """Judge a try that raised instead of answering.

    Args:
        exc: the httpx, aiohttp, ssl or OS exception, or the ``ValueError`` (such as a
            ``UnicodeError``) of a URL the library could not encode.
        trust: what verifies the receiver (the CA file), for the message.

    Returns:
        The failure to raise: final for certificate problems and unusable URLs (kind
        ``"url"``), retryable otherwise.
    """
    for inner in _cause_chain(exc):
        if isinstance(inner, aiohttp.ClientError):
            continue  # aiohttp's wrappers subclass ssl errors; read the one they wrap
        failure = _tls_failure(inner, trust)
        if failure is not None:
            return failure
    name = type(exc).__name__
    if isinstance(exc, httpx.InvalidURL | aiohttp.InvalidURL) or (
        isinstance(exc, ValueError) and not isinstance(exc, OSError)
    ):
        # A URL (or header) the library cannot encode: UnicodeError from IDNA, httpx's
        # InvalidURL. No retry can fix it. aiohttp's text is the URL itself: not repeated.
        why = exc.description or name if isinstance(exc, aiohttp.InvalidURL) else str(exc)
        return AttemptFailed(f"{name}: {redact_url(why)}", retryable=False, kind="url", error=name)
    # Library messages may quote the URL (aiohttp's request info): never its password.
    text = redact_url(str(exc)) or name
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return AttemptFailed(
            f"{name}: no answer in time", retryable=True, kind="timeout", error=name
        )
    if isinstance(exc, httpx.ConnectError | aiohttp.ClientConnectorError):
        return AttemptFailed(f"cannot connect: {text}", retryable=True, kind="connect", error=name)
    if any(_dropped(inner) for inner in _cause_chain(exc)):
        # Under TLS 1.3 a receiver refusing our certificate after its handshake (our own
        # receiver's pinning, for one) just drops the connection: say so, keep retrying.
        text += _DROPPED_HINT
    return AttemptFailed(f"{name}: {text}", retryable=True, kind="transport", error=name)
