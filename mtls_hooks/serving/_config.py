"""The receiver's server configuration: typed, frozen, loaded from TOML, env and CLI.

:class:`ServerConfig` rejects misspelt keys by name (hypercorn's ``Config.from_mapping``
silently keeps them, a security bug waiting to happen for a TLS option) and refuses the
settings that would weaken mTLS: HTTP/3, which ignores client certificates, and an empty
peer policy without the explicit ``allow_any_client`` opt-in.

Precedence when layers are merged with :meth:`ServerConfig.load`: CLI > environment > file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import ssl
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.core._policy import PeerPolicy
from mtls_hooks.core._settings_names import CONFIG_PREFIX, RECEIVER_NAMES, SENDER_NAMES
from mtls_hooks.core._suggest import did_you_mean
from mtls_hooks.core._tls import (
    PinningContext,
    RefusalHook,
    create_server_context,
    load_client_ca,
)
from mtls_hooks.proxy._settings import UNIX_BIND_PREFIX, check_proxy_settings

__all__ = ["LOOPS", "SERVER_NAMES", "ServerConfig", "env_settings", "parse_bind"]

LOOPS = ("asyncio", "uvloop")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# hypercorn spellings that would turn on QUIC: refused by name, never "unknown".
_HTTP3_KEYS = frozenset({"quic_bind", "http3", "h3", "enable_http3"})
_HTTP3_REFUSAL = (
    "HTTP/3 ignores client certificates; refusing '{key}' (mTLS needs TCP + TLS, not QUIC)"
)


def parse_bind(bind: str) -> tuple[str, int]:
    """Split ``"host:port"`` or ``"[v6]:port"`` into a host and a port.

    Raises:
        ConfigurationError: if the port is missing or out of range, or the host is empty.
    """
    text = bind.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ConfigurationError(f"bind {bind!r}: IPv6 needs the form '[::1]:8443'")
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise ConfigurationError(f"bind {bind!r}: {host!r} is not an IPv6 address") from exc
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ConfigurationError(f"bind {bind!r} must be 'host:port' or '[v6]:port'")
        if ":" in host:
            raise ConfigurationError(f"bind {bind!r}: write an IPv6 host as '[{host}]:port'")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigurationError(f"bind {bind!r}: port must be 0..65535")
    return host, int(port_text)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything :func:`mtls_hooks.serve` needs; validated when constructed.

    Attributes:
        certfile: server certificate chain, PEM, leaf first.
        keyfile: server private key, PEM.
        client_ca: PEM bundles of the CAs whose client certificates are accepted.
        key_password_env: name of an environment variable holding the key passphrase.
        key_password_file: a file whose first line is the key passphrase.
        crl: CRLs of the client CAs (each leaf-issuing CA then needs one).
        pins: SPKI pins (``sha256/<b64>``) and/or SHA-256 certificate fingerprints.
        allow: identity rules ``dns:``, ``uri:``, ``email:``, ``subject:``.
        allow_any_client: admit every client the CA vouches for (explicit opt-in).
        bind: listen addresses, ``"127.0.0.1:8443"`` or ``"[::1]:8443"``.
        workers: worker processes; each enforces every guarantee.
        loop: each worker's event loop: ``"asyncio"`` (the default) or ``"uvloop"`` (the
            ``uvloop`` extra).
        handshake_timeout_s: TLS handshake deadline.
        keep_alive_timeout_s: idle keep-alive connections are closed after this.
        read_timeout_s: a connection that sends nothing for this long is closed.
        keep_alive_max_requests: requests per connection before a forced new handshake.
        max_header_bytes: HTTP/1.1 incomplete-request and HTTP/2 header-list limit.
        graceful_timeout_s: how long shutdown waits for in-flight requests.
        watch_files: reload when a certificate, key, CA, CRL or config file changes.
        watch_interval_s: how often watched files are checked (one ``os.stat`` each).
        log_level: logging level that :func:`mtls_hooks.serve`, its workers and the CLI
            apply when the application has not configured logging itself.
        client_cert_header: proxy mode: the format in which a TLS-terminating proxy forwards
            the client certificate (``rfc9440``, ``xfcc``, ``nginx``, ``alb``, ``traefik``).
            ``client_ca``, ``crl``, ``pins`` and ``allow`` then apply to that certificate.
        trusted_proxies: proxy mode: CIDR networks (and ``unix``) allowed to forward one; no
            default.
        proxy_listener: proxy mode: ``http`` (loopback or ``unix:`` binds only), ``tls``, or
            ``mtls`` (the proxy presents a certificate from ``proxy_ca`` matching
            ``proxy_pins``).
        proxy_ca: CA bundles of the proxy's own client certificate (``mtls`` listener).
        proxy_pins: SPKI pins or fingerprints of the proxy (``mtls`` listener).
        metrics_bind: ``host:port`` of the Prometheus listener (``GET /metrics``, plain
            HTTP, never on an mTLS port); ``None`` (the default) records nothing.
        expiry_warn_days: log a WARNING when a configured certificate or CRL expires
            within this many days (at start-up, then daily).
        expiry_error_days: log an ERROR within this many days, or once expired.
        config_file: the TOML file this config came from; re-read on every reload.

    Raises:
        ConfigurationError: on any invalid value (see :meth:`validate`).
    """

    certfile: str = ""
    keyfile: str = ""
    client_ca: tuple[str, ...] = ()
    key_password_env: str | None = None
    key_password_file: str | None = None
    crl: tuple[str, ...] = ()
    pins: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()
    allow_any_client: bool = False
    bind: tuple[str, ...] = ("127.0.0.1:8443",)
    workers: int = 1
    loop: str = "asyncio"
    handshake_timeout_s: float = 10.0
    keep_alive_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    keep_alive_max_requests: int = 1000
    max_header_bytes: int = 16384
    graceful_timeout_s: float = 5.0
    watch_files: bool = False
    watch_interval_s: float = 2.0
    log_level: str = "INFO"
    client_cert_header: str | None = None
    trusted_proxies: tuple[str, ...] = ()
    proxy_listener: str = "http"
    proxy_ca: tuple[str, ...] = ()
    proxy_pins: tuple[str, ...] = ()
    metrics_bind: str | None = None
    expiry_warn_days: float = 30.0
    expiry_error_days: float = 7.0
    config_file: str | None = None
    # The env and CLI layers a file-backed config was merged with, so that a reload
    # re-reads the file without losing the higher-precedence layers.
    _layers: tuple[Mapping[str, Any], ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check values that need no file access (files are checked by :meth:`peer_policy`
        and when the TLS context is built).

        Raises:
            ConfigurationError: naming the setting and how to fix it.
        """
        if not self.client_ca:
            raise ConfigurationError("client_ca is required: mTLS needs the CA of the senders")
        if self.key_password_env and self.key_password_file:
            raise ConfigurationError("set key_password_env or key_password_file, not both")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int):
            raise ConfigurationError(f"workers must be an integer, got {self.workers!r}")
        if self.workers < 1:
            raise ConfigurationError(f"workers must be >= 1, got {self.workers}")
        self.loop_factory()  # an unknown loop, or uvloop not installed, fails here
        if not self.bind:
            raise ConfigurationError("bind needs at least one address")
        for bind in self.bind:
            if not bind.startswith(UNIX_BIND_PREFIX):
                parse_bind(bind)
        self._validate_proxy()
        if self.serves_tls and not (self.certfile and self.keyfile):
            raise ConfigurationError("certfile and keyfile are required to serve TLS")
        for name in ("handshake_timeout_s", "keep_alive_timeout_s", "read_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"{name} must be > 0")
        if self.watch_interval_s < 0.05:
            raise ConfigurationError("watch_interval_s must be >= 0.05")
        if self.graceful_timeout_s < 0:
            raise ConfigurationError("graceful_timeout_s must be >= 0")
        for name in ("keep_alive_max_requests", "max_header_bytes"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be >= 1")
        if self.log_level.upper() not in _LOG_LEVELS:
            raise ConfigurationError(f"log_level must be one of {', '.join(_LOG_LEVELS)}")
        self._validate_metrics()
        if self.peer_policy().is_empty:
            raise ConfigurationError(
                "no client would be admitted: add a pin (--pin / pins), an identity rule "
                "(--allow-san / allow), or set allow_any_client = true to admit every client "
                "the CA vouches for"
            )

    def _validate_metrics(self) -> None:
        if self.metrics_bind is not None:
            if self.metrics_bind.startswith(UNIX_BIND_PREFIX):
                raise ConfigurationError("metrics_bind must be host:port, not a Unix socket")
            if self.metrics_bind in self.bind:
                raise ConfigurationError(
                    f"metrics_bind {self.metrics_bind} is a serving address: metrics need a "
                    "listener of their own, never the mTLS port"
                )
            parse_bind(self.metrics_bind)
        if not 0 <= self.expiry_error_days <= self.expiry_warn_days:
            raise ConfigurationError(
                "expiry_error_days must be >= 0 and <= expiry_warn_days "
                f"(got {self.expiry_error_days:g} and {self.expiry_warn_days:g})"
            )

    @property
    def proxy_mode(self) -> bool:
        """True when a proxy forwards client certificates (``client_cert_header`` is set)."""
        return self.client_cert_header is not None

    @property
    def serves_tls(self) -> bool:
        """True unless this is proxy mode over plain HTTP."""
        return not self.proxy_mode or self.proxy_listener != "http"

    def loop_factory(self) -> Callable[[], asyncio.AbstractEventLoop]:
        """Return the constructor of the event loop named by ``loop``.

        Raises:
            ConfigurationError: an unknown loop name, or ``"uvloop"`` without uvloop.
        """
        if self.loop == "asyncio":
            return asyncio.new_event_loop
        if self.loop != "uvloop":
            raise ConfigurationError(
                f"loop must be one of {', '.join(LOOPS)}, got {self.loop!r}"
                f"{did_you_mean(str(self.loop), LOOPS)}"
            )
        try:
            import uvloop
        except ImportError as exc:
            raise ConfigurationError(
                "loop 'uvloop' needs uvloop: pip install 'mtls-hooks[uvloop]'"
            ) from exc
        return uvloop.new_event_loop

    def _validate_proxy(self) -> None:
        check_proxy_settings(
            client_cert_header=self.client_cert_header,
            trusted_proxies=self.trusted_proxies,
            proxy_listener=self.proxy_listener,
            proxy_ca=self.proxy_ca,
            proxy_pins=self.proxy_pins,
            bind=self.bind,
        )

    def check_files(self) -> None:
        """Build the TLS context once to prove every file is readable and consistent.

        Construction checks values only, so that a config can be built, replaced and
        pickled cheaply; :func:`mtls_hooks.serve` calls this before binding any socket.

        Raises:
            ConfigurationError: unreadable files, a key not matching the certificate, a
                wrong passphrase, a CRL missing for a client CA.
        """
        if self.proxy_mode:
            load_client_ca(self.client_ca, self.crl)
        if self.serves_tls:
            self.server_context(on_refusal=None)

    def server_context(self, *, on_refusal: RefusalHook | None) -> PinningContext:
        """Build the pinned server context these settings describe.

        Args:
            on_refusal: called with each refused handshake (for the log and the metrics).

        Raises:
            ConfigurationError: unreadable files, a key not matching the certificate, a
                wrong passphrase, a CRL missing for a client CA, bad pins.
        """
        if self.proxy_mode:
            return self._proxy_server_context(on_refusal)
        return create_server_context(
            certfile=self.certfile,
            keyfile=self.keyfile,
            client_ca=self.client_ca,
            crl=self.crl,
            peer_policy=self.peer_policy(),
            key_password=self.key_password(),
            on_refusal=on_refusal,
        )

    def _proxy_server_context(self, on_refusal: RefusalHook | None) -> PinningContext:
        if self.proxy_listener == "mtls":
            # The handshake is with the proxy: its CA, its pins.
            return create_server_context(
                certfile=self.certfile,
                keyfile=self.keyfile,
                client_ca=self.proxy_ca,
                peer_policy=PeerPolicy.from_rules(self.proxy_pins),
                key_password=self.key_password(),
                on_refusal=on_refusal,
            )
        if self.proxy_listener != "tls":
            raise ConfigurationError("proxy_listener 'http' serves no TLS")
        context = create_server_context(
            certfile=self.certfile,
            keyfile=self.keyfile,
            client_ca=self.client_ca,
            peer_policy=None,
            key_password=self.key_password(),
            on_refusal=on_refusal,
        )
        # A 'tls' listener asks the proxy for no certificate (trusted_proxies decides who may
        # forward): the one setting taken back from the hardened mTLS context.
        context.verify_mode = ssl.CERT_NONE
        return context

    def peer_policy(self) -> PeerPolicy:
        """Return the handshake policy built from ``pins``, ``allow`` and ``allow_any_client``.

        Raises:
            ConfigurationError: on a malformed pin or rule.
        """
        return PeerPolicy.from_rules(self.pins, self.allow, allow_any=self.allow_any_client)

    def key_password(self) -> bytes | None:
        """Return the key passphrase from ``key_password_env`` or ``key_password_file``.

        Raises:
            ConfigurationError: if the variable is unset or the file unreadable.
        """
        if self.key_password_env:
            value = os.environ.get(self.key_password_env)
            if value is None:
                raise ConfigurationError(f"key_password_env: ${self.key_password_env} is not set")
            return value.encode("utf-8")
        if self.key_password_file:
            try:
                text = Path(self.key_password_file).read_text("utf-8")
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot read key_password_file {self.key_password_file}: {exc.strerror}"
                ) from exc
            return text.splitlines()[0].encode("utf-8") if text else b""
        return None

    def watched_files(self) -> tuple[str, ...]:
        """Files whose change triggers a reload when ``watch_files`` is on."""
        files = [self.certfile, self.keyfile, *self.client_ca, *self.crl, *self.proxy_ca]
        if self.config_file:
            files.append(self.config_file)
        if self.key_password_file:
            files.append(self.key_password_file)
        return tuple(dict.fromkeys(f for f in files if f))

    def replace(self, **changes: Any) -> ServerConfig:
        """Return a copy with ``changes`` applied and validated.

        Raises:
            ConfigurationError: on unknown keys or invalid values.
        """
        _check_keys(changes)
        return dataclasses.replace(self, **_coerce(changes))

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> ServerConfig:
        """Build from a flat mapping of setting names to values.

        Raises:
            ConfigurationError: on unknown keys (naming the closest valid one), HTTP/3
                keys, missing required keys or invalid values.
        """
        return cls._build(dict(mapping))

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> ServerConfig:
        """Build from a TOML file; settings at top level or under ``[server]``.

        Raises:
            ConfigurationError: unreadable or invalid TOML, or any :meth:`from_mapping` error.
        """
        return cls.load(config_file=path, environ={})

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, prefix: str = "MTLS_HOOKS_"
    ) -> ServerConfig:
        """Build from environment variables such as ``MTLS_HOOKS_CLIENT_CA``.

        Lists are comma-separated; booleans accept ``1/0``, ``true/false``, ``yes/no``.

        Raises:
            ConfigurationError: as :meth:`from_mapping`, naming the variable.
        """
        return cls._build(env_settings(os.environ if environ is None else environ, prefix))

    @classmethod
    def load(
        cls,
        *,
        config_file: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
        prefix: str = "MTLS_HOOKS_",
    ) -> ServerConfig:
        """Merge a TOML file, the environment and explicit overrides (CLI > env > file).

        Raises:
            ConfigurationError: as :meth:`from_mapping`.
        """
        env = env_settings(os.environ if environ is None else environ, prefix)
        cli = {k: v for k, v in (overrides or {}).items() if v is not None}
        _check_keys(cli)
        merged: dict[str, Any] = {}
        path: str | None = None
        if config_file is not None:
            path = os.fspath(config_file)
            merged.update(_read_toml(path))
            merged["config_file"] = path
        merged.update(env)
        merged.update(cli)
        if path is not None:
            merged["_layers"] = (env, cli)
        return cls._build(merged)

    def reloaded(self) -> ServerConfig:
        """Re-read ``config_file`` (if any) under the same env and CLI layers.

        Raises:
            ConfigurationError: if the file became invalid.
        """
        if self.config_file is None:
            return self
        env, cli = self._layers or ({}, {})
        merged = {**_read_toml(self.config_file), **env, **cli}
        merged["config_file"] = self.config_file
        merged["_layers"] = self._layers
        return self._build(merged)

    @classmethod
    def _build(cls, mapping: dict[str, Any]) -> ServerConfig:
        layers = mapping.pop("_layers", ())
        _check_keys(mapping)
        required = ["certfile", "keyfile", "client_ca"]
        if mapping.get("client_cert_header") and mapping.get("proxy_listener", "http") == "http":
            required = ["client_ca"]  # plain HTTP behind a proxy: no server certificate
        missing = [k for k in required if not mapping.get(k)]
        if missing:
            raise ConfigurationError(f"missing required setting(s): {', '.join(missing)}")
        try:
            return cls(**_coerce(mapping), _layers=layers)
        except TypeError as exc:  # a wrongly typed value that slipped through coercion
            raise ConfigurationError(f"invalid server configuration: {exc}") from exc


_TUPLE_KEYS = frozenset(
    {"client_ca", "crl", "pins", "allow", "bind", "trusted_proxies", "proxy_ca", "proxy_pins"}
)
_BOOL_KEYS = frozenset({"allow_any_client", "watch_files"})
_INT_KEYS = frozenset({"workers", "keep_alive_max_requests", "max_header_bytes"})
_FLOAT_KEYS = frozenset(
    {
        "handshake_timeout_s",
        "keep_alive_timeout_s",
        "read_timeout_s",
        "graceful_timeout_s",
        "watch_interval_s",
        "expiry_warn_days",
        "expiry_error_days",
    }
)
_PUBLIC_KEYS = tuple(f.name for f in dataclasses.fields(ServerConfig) if not f.name.startswith("_"))
# The server's setting names, for the receiver, which shares the MTLS_HOOKS_ prefix.
SERVER_NAMES = frozenset(_PUBLIC_KEYS)


def _check_keys(mapping: Mapping[str, Any]) -> None:
    for key in mapping:
        if key in _HTTP3_KEYS:
            raise ConfigurationError(_HTTP3_REFUSAL.format(key=key))
        if key not in _PUBLIC_KEYS:
            raise ConfigurationError(f"unknown setting {key!r}{did_you_mean(key, _PUBLIC_KEYS)}")


def _coerce(mapping: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        try:
            out[key] = _coerce_one(key, value)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"setting {key!r}: invalid value {value!r}") from exc
    return out


def _coerce_one(key: str, value: Any) -> Any:
    if key in _TUPLE_KEYS:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, Sequence):
            return tuple(os.fspath(v) if isinstance(v, os.PathLike) else str(v) for v in value)
        raise TypeError(key)
    if key in _BOOL_KEYS:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(key)
    if key in _INT_KEYS:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(key)
        return int(value)
    if key in _FLOAT_KEYS:
        if isinstance(value, bool):
            raise ValueError(key)
        return float(value)
    if value is not None and isinstance(value, os.PathLike):
        return os.fspath(value)
    if key == "log_level":
        return str(value).upper()
    return value


def env_settings(environ: Mapping[str, str], prefix: str = CONFIG_PREFIX) -> dict[str, Any]:
    """Extract the settings spelt ``<prefix><KEY>`` from an environment mapping.

    Under the default prefix the webhook receiver's variables (``MTLS_HOOKS_DEDUPE_PATH``,
    ``MTLS_HOOKS_KEYS``, ...) and the sender CLI's ``MTLS_HOOKS_SECRET`` share the
    namespace: they are accepted and left to their readers (the receiver reads its own in
    the worker). ``PINS`` and ``ALLOW`` are both server and receiver names; in the
    environment they are the server's.

    Raises:
        ConfigurationError: on an unknown ``<prefix>`` variable, naming the closest server
            or receiver variable.
    """
    others = RECEIVER_NAMES | SENDER_NAMES if prefix == CONFIG_PREFIX else frozenset()
    settings: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(prefix):
            continue
        key = name[len(prefix) :].lower()
        if key in _HTTP3_KEYS:
            raise ConfigurationError(_HTTP3_REFUSAL.format(key=name))
        if key in _PUBLIC_KEYS and key != "config_file":
            settings[key] = value
        elif key not in others:
            valid = (*_PUBLIC_KEYS, *sorted(others))
            hint = did_you_mean(key, valid, spell=lambda k: prefix + k.upper())
            raise ConfigurationError(f"unknown environment setting {name!r}{hint}")
    return settings


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigurationError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"config file {path} is not valid TOML: {exc}") from exc
    section = data.pop("server", None)
    if section is not None:
        if not isinstance(section, dict):
            raise ConfigurationError(f"config file {path}: [server] must be a table")
        # With a [server] table, other tables belong to other components sharing the file
        # (e.g. [receiver]); top-level plain keys are still ours and still checked.
        data = {k: v for k, v in data.items() if not isinstance(v, dict)}
        overlap = set(section) & set(data)
        if overlap:
            raise ConfigurationError(
                f"config file {path}: {sorted(overlap)} set both at top level and in [server]"
            )
        data.update(section)
    if "config_file" in data:
        raise ConfigurationError(f"config file {path}: 'config_file' cannot be set in a file")
    # Relative paths in a config file are relative to the file, like nginx includes.
    base = Path(path).parent
    for key in ("certfile", "keyfile", "key_password_file"):
        if isinstance(data.get(key), str):
            data[key] = str(base / data[key])
    for key in ("client_ca", "crl", "proxy_ca"):
        value = data.get(key)
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            data[key] = [str(base / v) if isinstance(v, str) else v for v in value]
    return data
