"""One :class:`AsyncWebhookSender` per endpoint, rebuilt when its files or record change.

Delivery workers run for months; certificates and signing keys do not last that long. Each
sender is keyed by a fingerprint of its endpoint record and of the files it reads (size,
mtime and inode of the CA, certificate, key and key files): when a renewal or rotation
rewrites one, the next delivery builds a new sender (a new TLS context and signer) and the
old one closes once its deliveries finish. The fingerprint is looked at no more often than
``check_every_s`` per endpoint, so a delivery pays for no ``stat`` calls in between.
Environment variables are read when a sender is built: a changed variable needs a restart.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from mtls_hooks.outbox._endpoint import Endpoint, read_key_refs
from mtls_hooks.sender._async import AsyncWebhookSender

__all__ = ["SenderPool"]

_Fingerprint = tuple[object, ...]
_CHECK_EVERY_S: Final = 2.0


def _file_stamp(path: str | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


def fingerprint(endpoint: Endpoint) -> _Fingerprint:
    """What a sender for ``endpoint`` depends on: the record and its files' stamps."""
    key_files = [ref[5:] for ref in endpoint.signing_keys if ref.startswith("file:")]
    files = (endpoint.ca_file, endpoint.cert_file, endpoint.key_file, *key_files)
    return (repr(endpoint.to_config()), *(_file_stamp(path) for path in files))


@dataclass
class _Entry:
    sender: AsyncWebhookSender
    fingerprint: _Fingerprint
    checked_at: float
    in_flight: int = 0
    retired: list[AsyncWebhookSender] = field(default_factory=list)


class SenderPool:
    """The current sender of each endpoint; see the module docstring."""

    def __init__(
        self,
        *,
        max_connections: int,
        check_every_s: float = _CHECK_EVERY_S,
        monotonic: Callable[[], float] = time.monotonic,
        on_build: Callable[[Endpoint], object] | None = None,
    ) -> None:
        self._on_build = on_build
        self._max_connections = max_connections
        self._check_every_s = check_every_s
        self._monotonic = monotonic
        self._entries: dict[str, _Entry] = {}
        self._users: dict[int, int] = {}
        self._retired: list[AsyncWebhookSender] = []
        self.rebuilt = 0

    def _build(self, endpoint: Endpoint) -> AsyncWebhookSender:
        password = None
        if endpoint.key_password_env is not None:
            password = os.environ.get(endpoint.key_password_env)
        # One try per claim: the worker schedules the next one from the policy.
        policy = endpoint.retry.policy().replace(deadline_s=None)
        return AsyncWebhookSender(
            signing_keys=read_key_refs(endpoint.signing_keys),
            ca_file=endpoint.ca_file,
            certfile=endpoint.cert_file,
            keyfile=endpoint.key_file,
            key_password=password,
            pins=endpoint.pins,
            retry=policy,
            max_connections=self._max_connections,
        )

    def acquire(self, endpoint: Endpoint) -> AsyncWebhookSender:
        """The sender to use now for ``endpoint``; pair with :meth:`release`.

        Raises:
            ConfigurationError: unreadable certificate or key files, a bad key or pin.
        """
        now = self._monotonic()
        entry = self._entries.get(endpoint.name)
        if entry is None or now - entry.checked_at >= self._check_every_s:
            current = fingerprint(endpoint)
            if entry is None or current != entry.fingerprint:
                sender = self._build(endpoint)
                if self._on_build is not None:
                    self._on_build(endpoint)  # a new certificate to watch for expiry
                if entry is not None:
                    self._retired.append(entry.sender)
                    self.rebuilt += 1
                entry = _Entry(sender, current, now)
                self._entries[endpoint.name] = entry
            entry.checked_at = now
        key = id(entry.sender)
        self._users[key] = self._users.get(key, 0) + 1
        return entry.sender

    async def release(self, sender: AsyncWebhookSender) -> None:
        """Say a delivery with ``sender`` ended; close retired senders nobody uses."""
        key = id(sender)
        self._users[key] -= 1
        if not self._users[key]:
            del self._users[key]
        if self._retired:
            idle = [s for s in self._retired if id(s) not in self._users]
            self._retired = [s for s in self._retired if id(s) in self._users]
            for old in idle:
                await old.aclose()

    async def aclose(self) -> None:
        """Close every sender."""
        for sender in [*self._retired, *(e.sender for e in self._entries.values())]:
            await sender.aclose()
        self._entries.clear()
        self._retired.clear()
