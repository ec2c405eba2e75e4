"""What a delivery did: one :class:`Attempt` per HTTP try, gathered in a :class:`DeliveryResult`.

Both are immutable named tuples, safe to log: they hold statuses, timings and error class
names, never a secret, a signature or the payload. Named tuples rather than frozen dataclasses
because every delivery builds them: ~0.3 µs each instead of ~2-4 µs (a frozen dataclass sets
each field through ``object.__setattr__``), which matters next to a ~200 µs aiohttp request.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final, Literal, NamedTuple, TypeAlias

if TYPE_CHECKING:
    from mtls_hooks.core._errors import DeliveryError

__all__ = ["Attempt", "DeliveryResult", "WaitReason", "redact_url"]

WaitReason: TypeAlias = Literal["backoff", "retry-after"]

# "//user:password@" up to the authority's last "@" (urlsplit's reading of "a:p@ss@host").
_USERINFO: Final = re.compile(r"//([^/?#@\s:]*)(:[^/?#\s]*)?@")


def _hide(match: re.Match[str]) -> str:
    return f"//{match[1]}:***@" if match[2] is not None else "//***@"


def redact_url(text: str) -> str:
    """Hide the password of every URL in ``text``: ``https://alice:***@host/``.

    A webhook URL may carry credentials (httpx and aiohttp send them as Basic auth); every
    repr, message and log line showing a URL goes through here. A userinfo without a colon
    may be a token itself (``https://<token>@host/``): it shows as ``***``. Takes malformed
    URLs and whole messages quoting URLs alike, and never raises.

    Args:
        text: a URL, or any text that may quote one.

    Returns:
        ``text`` with each URL's userinfo password (or lone userinfo) replaced by ``***``.
    """
    if "@" not in text:
        return text
    return _USERINFO.sub(_hide, text)


class Attempt(NamedTuple):
    """One HTTP try of a delivery.

    Attributes:
        number: 1 for the first try.
        status_code: the HTTP status, or ``None`` when no answer arrived.
        latency_s: wall time of the try, from sending to the end of the answer or failure.
        error: the class name of the failure (``"ConnectError"``, ``"ReadTimeout"``,
            ``"SSLCertVerificationError"``), ``None`` for an answer.
        detail: one line saying what happened, never key material.
        wait_s: how long the sender waited after this try before the next; ``None`` for the
            last try.
        wait_reason: ``"retry-after"`` when the receiver's ``Retry-After`` set the wait,
            ``"backoff"`` when the backoff schedule did.
    """

    number: int
    status_code: int | None
    latency_s: float
    error: str | None = None
    detail: str = ""
    wait_s: float | None = None
    wait_reason: WaitReason | None = None

    def __str__(self) -> str:
        outcome = str(self.status_code) if self.status_code is not None else self.error
        text = f"#{self.number} {outcome} in {self.latency_s * 1000:.1f} ms"
        if self.detail:
            text += f" ({self.detail})"
        if self.wait_s is not None:
            text += f", then waited {self.wait_s:.2f} s ({self.wait_reason})"
        return text


class DeliveryResult(NamedTuple):
    """The outcome of one webhook delivery, with every attempt.

    Attributes:
        url: where it was sent, as given (its repr hides a password: see ``redact_url``).
        webhook_id: the ``webhook-id`` used on every attempt.
        attempts: the tries, oldest first.
        error: the failure, ``None`` when the receiver answered 2xx. ``send`` raises it;
            ``send_many`` returns it here so one failure does not hide the other results.
    """

    url: str
    webhook_id: str
    attempts: tuple[Attempt, ...]
    error: DeliveryError | None = None

    @property
    def ok(self) -> bool:
        """True when the last attempt was answered with a 2xx status."""
        return self.error is None

    @property
    def status_code(self) -> int | None:
        """The status of the last attempt, ``None`` if it got no answer."""
        return self.attempts[-1].status_code if self.attempts else None

    @property
    def elapsed_s(self) -> float:
        """Time spent in attempts and waits."""
        return sum(a.latency_s + (a.wait_s or 0.0) for a in self.attempts)

    def raise_for_error(self) -> DeliveryResult:
        """Return ``self`` when delivered.

        Raises:
            DeliveryError: the recorded failure (a subclass such as ``TLSError``).
        """
        if self.error is not None:
            raise self.error
        return self

    def __repr__(self) -> str:
        # The default repr would recurse through error.result back to this record.
        status = "ok" if self.ok else type(self.error).__name__
        return (
            f"DeliveryResult(url={redact_url(self.url)!r}, webhook_id={self.webhook_id!r}, "
            f"status_code={self.status_code}, attempts={len(self.attempts)}, {status})"
        )
