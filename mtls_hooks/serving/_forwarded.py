"""Proxy mode: an ASGI layer that admits a forwarded client certificate, or refuses.

Behind a TLS-terminating proxy (``client_cert_header`` set) the client's certificate arrives
in a header. Such a header is a credential: CVE-2026-46579 came from a router forwarding
client-sent ``X-SSL-Client-*`` headers, CVE-2026-35616 from an app trusting a client-sent
``X-SSL-CLIENT-VERIFY: SUCCESS``. So, for every HTTP and WebSocket request, before the app:

1. **Who connected.** The TCP peer (``scope["client"]``) must be in ``trusted_proxies``. From
   any other peer the request is refused, 403 ``untrusted-proxy``, and when it carries any
   known client-certificate or verify header (every format, any case, ``-`` or ``_``) the
   log line names it: a spoofing attempt, or a proxy that is not the one configured.
2. **What it forwarded.** The configured header is parsed (:mod:`mtls_hooks.proxy._headers`);
   none is 403 ``no-certificate``; a malformed one 400, an oversized one 431.
3. **Re-verification.** Chain to ``client_ca`` with the CRLs (pyOpenSSL), clientAuth EKU and
   validity (cryptography), then the ``PeerPolicy`` pins and rules
   (:mod:`mtls_hooks.proxy._verify`). A proxy's own verdict is never read.
4. **What the app sees.** Every client-certificate-like header is removed from the scope, and
   ``extensions["tls"]`` describes the forwarded certificate (ASGI TLS spec 0.2, with
   ``tls_version`` and ``cipher_suite`` unknown: that TLS ended at the proxy) plus
   ``"mtls_hooks.forwarded": {"proxy": ..., "header": ...}``. ``current_peer()``,
   ``require_peer`` and the receiver read it as they read a handshake's.

Refusals are RFC 9457 problems written here, without Quart, so the layer works for any ASGI
app, and one line each on ``mtls_hooks.tls`` with the handshake's reason codes. Verdicts are
cached per exact header value and per certificate; a reload (SIGHUP, ``--watch``) builds a
new verifier, so new CAs, CRLs and pins apply to the next request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.core._identity import PeerIdentity
from mtls_hooks.core._problem import PROBLEM_CONTENT_TYPE, problem_body
from mtls_hooks.core._tls import PinningContext, RefusalHook
from mtls_hooks.proxy._headers import (
    ForwardedCert,
    ForwardedCertError,
    looks_like_cert_header,
    parse_forwarded_cert,
)
from mtls_hooks.proxy._trust import ProxyAllowList
from mtls_hooks.proxy._verify import CertificateVerifier, ForwardedVerifier
from mtls_hooks.serving._config import ServerConfig
from mtls_hooks.serving._reload import TLSMaterial

__all__ = [
    "FORWARDED_KEY",
    "ForwardedCertApp",
    "ForwardedRefusalLog",
    "ProxyMaterial",
    "ProxyState",
    "forwarded_refusals",
    "make_material",
]

logger = logging.getLogger("mtls_hooks.tls")
reload_logger = logging.getLogger("mtls_hooks.reload")
#: The key of ``scope["extensions"]["tls"]`` that marks a forwarded identity.
FORWARDED_KEY = "mtls_hooks.forwarded"
_PARSE_CACHE_ENTRIES = 1024
_NOT_TOKEN = re.compile(r"[^A-Za-z0-9!#$%&'*+.^_`|~-]")  # RFC 9110 §5.6.2 tchar


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def _peer_text(client: Any) -> str:
    if client is None:
        return "unix"
    if isinstance(client, (tuple, list)) and len(client) >= 2:
        host, port = client[0], client[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(client)


@dataclass(frozen=True, slots=True)
class ProxyState:
    """One consistent set of proxy-mode rules; replaced whole on reload.

    Attributes:
        header_format: the ``client_cert_header`` format.
        trusted: the ``trusted_proxies`` allow-list.
        verifier: chain, CRL, key usage, validity and pins, with its verdict cache.
        max_header_bytes: the request header limit (431 above it).
        generation: 0 at start, +1 per successful reload.
    """

    header_format: str
    trusted: ProxyAllowList
    verifier: ForwardedVerifier
    max_header_bytes: int
    generation: int = 0
    parsed: OrderedDict[tuple[tuple[bytes, bytes], ...], _Parsed | ForwardedCertError | None] = (
        field(default_factory=OrderedDict, repr=False, compare=False)
    )

    @classmethod
    def build(cls, config: ServerConfig, generation: int = 0) -> ProxyState:
        """Read the client CAs and CRLs and build the rules of ``config``.

        Raises:
            ConfigurationError: not proxy mode, unreadable CA or CRL files, bad pins.
        """
        if config.client_cert_header is None:
            raise ConfigurationError("proxy mode needs client_cert_header")
        verifier = CertificateVerifier.from_files(config.client_ca, config.crl)
        return cls(
            header_format=config.client_cert_header,
            trusted=ProxyAllowList.parse(config.trusted_proxies),
            verifier=ForwardedVerifier(verifier, config.peer_policy()),
            max_header_bytes=config.max_header_bytes,
            generation=generation,
        )

    def parse(self, cert_headers: tuple[tuple[bytes, bytes], ...]) -> _Parsed | None:
        """Parse the forwarded certificate, cached per exact client-certificate headers.

        Args:
            cert_headers: the request's client-certificate-like header lines.

        Raises:
            ForwardedCertError: as :func:`~mtls_hooks.proxy._headers.parse_forwarded_cert`.
        """
        cache = self.parsed
        hit = cache.get(cert_headers, _MISSING)
        if hit is _MISSING:
            try:
                forwarded = parse_forwarded_cert(self.header_format, cert_headers)
                hit = None if forwarded is None else _Parsed(forwarded)
            except ForwardedCertError as exc:
                hit = exc
            cache[cert_headers] = hit
            if len(cache) > _PARSE_CACHE_ENTRIES:
                cache.popitem(last=False)
        if isinstance(hit, ForwardedCertError):
            raise ForwardedCertError(
                str(hit), reason=hit.reason, status=hit.status, subject=hit.subject
            )
        result: _Parsed | None = hit
        return result


class _Parsed:
    """A parsed forwarded certificate and its chain as PEM, for the ``tls`` extension."""

    __slots__ = ("cert", "chain_pem")

    def __init__(self, cert: ForwardedCert) -> None:
        self.cert = cert
        self.chain_pem = tuple(
            ssl.DER_cert_to_PEM_cert(der) for der in (cert.leaf_der, *cert.chain_der)
        )


_MISSING: Any = object()


class ForwardedCertApp:
    """ASGI 3 middleware: the trust rules of proxy mode in front of ``app``.

    Args:
        app: the application.
        state: a callable returning the current :class:`ProxyState` (reloads swap it).
    """

    __slots__ = ("_app", "_state")

    def __init__(self, app: Any, state: Callable[[], ProxyState]) -> None:
        self._app = app
        self._state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self._app(scope, receive, send)
            return
        state = self._state()
        # One pass: the size, the client-certificate-like lines, and the lines the app keeps.
        size = 0
        kept: list[tuple[bytes, bytes]] = []
        certs: list[tuple[bytes, bytes]] = []
        for line in scope["headers"]:
            name, value = line
            size += len(name) + len(value)
            if looks_like_cert_header(name):
                certs.append((name.lower(), value))
            else:
                kept.append(line)
        if size > state.max_header_bytes:
            # RFC 6585 §5; a TLS listener checks this too, a plain one only here.
            error = ForwardedCertError(
                f"request headers are {size} bytes; the limit is {state.max_header_bytes}",
                reason="headers",
                status=431,
            )
            await _refuse(scope, send, error, header="-")
            return
        client = scope.get("client")
        cert_headers = tuple(certs)
        if not state.trusted.allows(client):
            named = [name.decode("latin-1") for name, _ in cert_headers]
            detail = (
                f"client certificate header {named[0]!r} from {_peer_text(client)}, which is "
                "not a trusted proxy"
                if named
                else f"{_peer_text(client)} is not a trusted proxy"
            )
            error = ForwardedCertError(detail, reason="untrusted-proxy", status=403)
            await _refuse(scope, send, error, header=named[0] if named else "-")
            return
        try:
            parsed = state.parse(cert_headers)
            if parsed is None:
                raise ForwardedCertError(
                    f"the proxy forwarded no client certificate ({state.header_format} header)",
                    reason="no-certificate",
                    status=403,
                )
            identity = state.verifier.verify(parsed.cert)
        except ForwardedCertError as error:
            await _refuse(scope, send, error, header=state.header_format)
            return
        extensions = {
            **(scope.get("extensions") or {}),
            "tls": _tls_extension(parsed, identity, client, state.header_format),
        }
        await self._app({**scope, "headers": kept, "extensions": extensions}, receive, send)


def _tls_extension(
    parsed: _Parsed, identity: PeerIdentity, proxy: Any, header_format: str
) -> dict[str, Any]:
    # ASGI TLS spec 0.2: client_cert_chain is PEM, leaf first; tls_version and cipher_suite
    # describe the client's TLS connection, which ended at the proxy: unknown here.
    return {
        "server_cert": None,
        "client_cert_chain": list(parsed.chain_pem),
        "client_cert_name": identity.subject,
        "client_cert_error": None,
        "tls_version": None,
        "cipher_suite": None,
        FORWARDED_KEY: {"proxy": _peer_text(proxy), "header": header_format},
    }


class ForwardedRefusalLog:
    """Counts every forwarded-certificate refusal and logs them, bounded per peer and reason.

    As the handshake's ``RefusalLog`` (issue 9): the first ``lines_per_window`` refusals per
    (peer host, reason) in ``window_s`` get a line each; the rest are counted and summed into
    one ``event=forwarded_refused_summary`` line, written by the first refusal after the
    window ends or by :meth:`flush`. A spoofing flood cannot fill the disk.

    Args:
        lines_per_window: full lines per (peer host, reason) and window.
        window_s: the window, in seconds.
        max_keys: windows tracked at once; beyond it the oldest are summarised and dropped.
        clock: monotonic seconds (injectable).

    Attributes:
        counts: refusals per reason since this object was made, logged or not.
    """

    def __init__(
        self,
        *,
        lines_per_window: int = 10,
        window_s: float = 60.0,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lines_per_window = lines_per_window
        self.window_s = window_s
        self.max_keys = max_keys
        self.counts: dict[str, int] = {}
        self._clock = clock
        # (host, reason) -> [window start, lines logged, refusals not logged]
        self._windows: dict[tuple[str, str], list[float]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def record(self, client: Any, error: ForwardedCertError, header: str) -> None:
        """Count one refusal and log it unless its window's lines are used up."""
        self.counts[error.reason] = self.counts.get(error.reason, 0) + 1
        now = self._clock()
        host = str(client[0]) if isinstance(client, (tuple, list)) and client else "unix"
        key = (host, error.reason)
        window = self._windows.get(key)
        if window is not None and now - window[0] >= self.window_s:
            self._summarise(key)
            window = None
        if window is None:
            if len(self._windows) >= self.max_keys:
                self._summarise(next(iter(self._windows)))
            window = self._windows[key] = [now, 0, 0]
        if window[1] >= self.lines_per_window:
            window[2] += 1
            self._schedule(window[0] + self.window_s - now)
            return
        window[1] += 1
        logger.warning(
            "event=forwarded_refused peer=%s reason=%s subject=%s spki=%s header=%s detail=%s",
            _peer_text(client),
            error.reason,
            _quote(error.subject) if error.subject else "-",
            error.spki_pin or "-",
            _NOT_TOKEN.sub("?", header),  # HTTP parsers allow tokens only: a parsable line
            _quote(str(error)),
        )

    def flush(self) -> None:
        """Summarise every window that has ended."""
        self._timer = None
        now = self._clock()
        for key in [k for k, w in self._windows.items() if now - w[0] >= self.window_s]:
            self._summarise(key)

    def reset(self) -> None:
        """Forget the windows and the counts (a test's fresh start)."""
        self._windows.clear()
        self.counts.clear()

    def _schedule(self, delay_s: float) -> None:
        # One timer, so the summary of a flood that stopped is written too.
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: flush() is called instead
            return
        self._timer = loop.call_later(max(delay_s, 0.0), self.flush)

    def _summarise(self, key: tuple[str, str]) -> None:
        _, _, suppressed = self._windows.pop(key)
        if suppressed:
            logger.warning(
                "event=forwarded_refused_summary peer=%s reason=%s more=%d window_s=%g",
                key[0],
                key[1],
                suppressed,
                self.window_s,
            )


#: The process-wide log of forwarded refusals (``forwarded_refusals.counts`` for metrics).
forwarded_refusals = ForwardedRefusalLog()


async def _refuse(scope: Any, send: Any, error: ForwardedCertError, *, header: str) -> None:
    forwarded_refusals.record(scope.get("client"), error, header)
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})  # policy violation
        return
    body = problem_body(error.status, detail=str(error), reason=error.reason)
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                # Nothing of the body was read: do not let the proxy reuse this connection
                # with half a request on it.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ProxyMaterial:
    """What a proxy-mode server reloads: the :class:`ProxyState` and, for a TLS listener,
    the :class:`TLSMaterial` of the proxy-facing handshake.

    It offers what the serving core asks of a :class:`TLSMaterial` (``listening_context``,
    ``server_cert_pem``, ``reload``, ``install_signal_handler``, ``watch``), so that SIGHUP
    and ``--watch`` reload both.

    Args:
        config: a proxy-mode configuration.
        on_refusal: the hook for refused handshakes with the proxy (TLS listeners).

    Raises:
        ConfigurationError: invalid CA, CRL, pins or TLS files.
    """

    def __init__(self, config: ServerConfig, *, on_refusal: RefusalHook | None = None) -> None:
        self._config = config
        self._state = ProxyState.build(config)
        self.tls = TLSMaterial(config, on_refusal=on_refusal) if config.serves_tls else None
        self._file_state = self._stat_files(config)
        self.reload_count = 0
        self.failed_reloads = 0

    @property
    def config(self) -> ServerConfig:
        """The configuration in force."""
        return self._config

    @property
    def state(self) -> ProxyState:
        """The proxy rules in force."""
        return self._state

    @property
    def listening_context(self) -> PinningContext | None:
        """The proxy-facing TLS context, or ``None`` for plain HTTP."""
        return None if self.tls is None else self.tls.listening_context

    def server_cert_pem(self, context: ssl.SSLContext) -> str | None:
        """The server certificate ``context`` presents (TLS listeners)."""
        return None if self.tls is None else self.tls.server_cert_pem(context)

    def wrap(self, app: Any) -> ForwardedCertApp:
        """Put the trust rules in front of ``app``."""
        return ForwardedCertApp(app, lambda: self._state)

    def reload(self) -> bool:
        """Re-read the configuration, CAs, CRLs and pins (and the TLS files); all or nothing.

        Returns:
            True if the new rules are in use, False if the old ones were kept.
        """
        old = self._state
        try:
            config = self._config.reloaded()
            state = ProxyState.build(config, generation=old.generation + 1)
        except (ConfigurationError, OSError, ValueError) as exc:
            self.failed_reloads += 1
            reload_logger.error(
                "event=reload_failed pid=%d generation=%d reason=%r kept=old-material",
                os.getpid(),
                old.generation,
                str(exc),
            )
            return False
        if self.tls is not None and not self.tls.reload():  # it logged why
            self.failed_reloads += 1
            return False
        self._config, self._state = config, state
        self._file_state = self._stat_files(config)
        self.reload_count += 1
        reload_logger.info(
            "event=reloaded pid=%d generation=%d mode=proxy header=%s",
            os.getpid(),
            state.generation,
            state.header_format,
        )
        return True

    def install_signal_handler(self, loop: asyncio.AbstractEventLoop) -> Callable[[], bool]:
        """Reload on SIGHUP; returns a function that removes the handler."""
        import signal

        loop.add_signal_handler(signal.SIGHUP, self.reload)
        return lambda: loop.remove_signal_handler(signal.SIGHUP)

    @staticmethod
    def _stat_files(config: ServerConfig) -> tuple[tuple[str, int, int, int] | None, ...]:
        states: list[tuple[str, int, int, int] | None] = []
        for path in config.watched_files():
            try:
                st = os.stat(path)
            except OSError:
                states.append(None)
                continue
            states.append((path, st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(states)

    def check_files(self) -> bool:
        """Reload if a watched file changed since the last check; True on a reload."""
        state = self._stat_files(self._config)
        if state == self._file_state:
            return False
        self._file_state = state
        return self.reload()

    async def watch(self, stop: asyncio.Event) -> None:
        """Poll the watched files every ``watch_interval_s`` until ``stop`` is set."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=self._config.watch_interval_s)
            except TimeoutError:
                self.check_files()


def make_material(
    config: ServerConfig, *, on_refusal: RefusalHook | None
) -> TLSMaterial | ProxyMaterial:
    """The reloadable material ``config`` serves with: proxy mode or direct mTLS.

    Raises:
        ConfigurationError: invalid files or settings.
    """
    if config.proxy_mode:
        return ProxyMaterial(config, on_refusal=on_refusal)
    return TLSMaterial(config, on_refusal=on_refusal)
