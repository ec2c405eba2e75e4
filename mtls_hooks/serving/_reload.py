"""TLS material that can be replaced without a restart.

A :class:`TLSMaterial` holds one immutable :class:`Snapshot` (context, policy, server
certificate) and swaps it by replacing a single reference, so a handshake sees either the old
material or the new, never half of each. The context handed to the listening socket carries
an ``sni_callback`` that moves every new handshake onto the current snapshot's context (the
callback runs with or without SNI), so new handshakes pick up the new server certificate and
key, client CA bundle, CRL and pins, while established connections keep their own context.

Reloads happen on SIGHUP (:meth:`TLSMaterial.install_signal_handler`) and, when
``watch_files`` is on, when one of the files changes (:meth:`TLSMaterial.watch`, one cheap
``os.stat`` per file per interval). A reload that fails validation keeps the old snapshot
and logs why on the ``mtls_hooks.reload`` logger.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.core._policy import PeerPolicy
from mtls_hooks.core._tls import PinningContext, RefusalHook
from mtls_hooks.serving._config import ServerConfig

__all__ = ["Snapshot", "TLSMaterial", "build_snapshot"]

logger = logging.getLogger("mtls_hooks.reload")

# A stat signature per watched file: a change of any field means "reload".
_FileState = tuple[tuple[str, int, int, int] | None, ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One consistent set of TLS material.

    Attributes:
        config: the configuration it was built from.
        context: the server context for new handshakes.
        policy: the handshake peer policy (also set on ``context``).
        server_cert_pem: the server leaf certificate, PEM, for the ASGI ``tls`` extension.
        generation: 0 for the initial material, +1 per successful reload.
    """

    config: ServerConfig
    context: PinningContext
    policy: PeerPolicy
    server_cert_pem: str
    generation: int


def build_snapshot(
    config: ServerConfig, *, on_refusal: RefusalHook | None, generation: int = 0
) -> Snapshot:
    """Build a complete snapshot from ``config``; nothing is shared with older snapshots.

    Raises:
        ConfigurationError: unreadable files, mismatched key, CRL trap, bad pins.
    """
    policy = config.peer_policy()
    pem = _read_cert(config.certfile)
    context = config.server_context(on_refusal=on_refusal)
    # The context read the file itself; a rotation landing in between would make the ASGI
    # server_cert disagree with the certificate actually served, so refuse and keep the old.
    if _read_cert(config.certfile) != pem:
        raise ConfigurationError(f"{config.certfile} changed while it was being loaded")
    leaf_end = pem.find("-----END CERTIFICATE-----")
    leaf = pem[pem.find("-----BEGIN CERTIFICATE-----") : leaf_end] + "-----END CERTIFICATE-----\n"
    return Snapshot(config, context, policy, leaf, generation)


def _check_swappable(listening: ssl.SSLContext, new: ssl.SSLContext) -> None:
    """Refuse material whose verify flags differ from the listening context's.

    The ``sni_callback`` swap is OpenSSL's ``SSL_set_SSL_CTX``, which moves the certificate,
    key and CA store (CRLs included) but not the ``X509_VERIFY_PARAM`` that ``SSL_new``
    copied from the listening context (ssl/ssl_lib.c). A CRL added at reload would be
    loaded and never checked (revoked clients admitted); one removed would fail every client
    ("unable to get certificate CRL").

    Raises:
        ConfigurationError: ``crl`` was switched on or off.
    """
    if new.verify_flags != listening.verify_flags:
        raise ConfigurationError(
            "crl was added or removed: that takes a restart (each connection keeps the "
            "CRL checking of the context the server started with); CRLs can be replaced "
            "at reload"
        )


def _read_cert(path: str) -> str:
    try:
        return Path(path).read_text("ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read certificate {path}") from exc


def _stat(path: str) -> tuple[str, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (path, st.st_mtime_ns, st.st_size, st.st_ino)


class TLSMaterial:
    """The current TLS snapshot of one worker process, replaceable at runtime.

    Args:
        config: the starting configuration; its files must be valid.
        on_refusal: the refusal hook set on every context built here.

    Raises:
        ConfigurationError: if the initial material is invalid (the server does not start).
    """

    def __init__(self, config: ServerConfig, *, on_refusal: RefusalHook | None = None) -> None:
        self._on_refusal = on_refusal
        self._current = build_snapshot(config, on_refusal=on_refusal)
        self._initial = self._current
        self._initial.context.sni_callback = self._select_context
        self._file_state = self._stat_files(config)
        # Which server certificate a context serves, for connections that started on an
        # older snapshot; weak so that retired contexts are freed with their connections.
        self._pems: weakref.WeakKeyDictionary[ssl.SSLContext, str] = weakref.WeakKeyDictionary()
        self._pems[self._current.context] = self._current.server_cert_pem
        self.reload_count = 0
        self.failed_reloads = 0

    @property
    def current(self) -> Snapshot:
        """The snapshot new handshakes use."""
        return self._current

    def server_cert_pem(self, context: ssl.SSLContext) -> str:
        """The server certificate (PEM) that ``context`` presents."""
        return self._pems.get(context) or self._current.server_cert_pem

    @property
    def listening_context(self) -> PinningContext:
        """The context to give the listening socket (it redirects to :attr:`current`)."""
        return self._initial.context

    def _select_context(
        self, ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        # Called by OpenSSL on the ClientHello of every new connection; swapping the context
        # here changes the certificate, key, CA store (with its CRLs) and the pin policy
        # that _tls checks after the handshake, for this connection only. The verify flags
        # stay the listening context's: see _check_swappable.
        current = self._current.context
        if ssl_object.context is not current:
            ssl_object.context = current

    def reload(self) -> bool:
        """Rebuild the material from the (re-read) config; swap it in only if all of it is valid.

        Returns:
            True if the new material is in use, False if the old one was kept.
        """
        old = self._current
        try:
            config = old.config.reloaded()
            new = build_snapshot(config, on_refusal=self._on_refusal, generation=old.generation + 1)
            _check_swappable(self._initial.context, new.context)
        except (ConfigurationError, OSError, ValueError) as exc:
            self.failed_reloads += 1
            logger.error(
                "event=reload_failed pid=%d generation=%d reason=%r kept=old-material",
                os.getpid(),
                old.generation,
                str(exc),
            )
            return False
        self._pems[new.context] = new.server_cert_pem
        self._current = new  # the single reference swap: handshakes see old or new, never half
        self.reload_count += 1
        self._file_state = self._stat_files(config)
        logger.info(
            "event=reloaded pid=%d generation=%d pins=%d rules=%d",
            os.getpid(),
            new.generation,
            len(new.policy.spki_pins) + len(new.policy.fingerprints),
            len(config.allow),
        )
        return True

    def install_signal_handler(self, loop: asyncio.AbstractEventLoop) -> Callable[[], bool]:
        """Reload on SIGHUP in this process; returns a function that removes the handler."""
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        return lambda: loop.remove_signal_handler(signal.SIGHUP)

    @staticmethod
    def _stat_files(config: ServerConfig) -> _FileState:
        return tuple(_stat(path) for path in config.watched_files())

    def check_files(self) -> bool:
        """Reload if a watched file changed since the last check; returns True on a reload."""
        state = self._stat_files(self._current.config)
        if state == self._file_state:
            return False
        # Remember the state even if the reload fails: a half-written rotation (new cert,
        # old key) is retried when the next file changes, not logged every interval.
        self._file_state = state
        return self.reload()

    async def watch(self, stop: asyncio.Event) -> None:
        """Poll the watched files every ``watch_interval_s`` until ``stop`` is set."""
        while not stop.is_set():
            interval = self._current.config.watch_interval_s
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                self.check_files()
