"""The proxy-mode settings of the server configuration, checked together, failing closed.

:class:`~mtls_hooks.ServerConfig` calls :func:`check_proxy_settings` from its validation; the
rules live here, beside the headers and the trust list they describe.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.core._policy import PeerPolicy
from mtls_hooks.core._suggest import did_you_mean
from mtls_hooks.proxy._headers import HEADER_FORMATS
from mtls_hooks.proxy._trust import ProxyAllowList

__all__ = ["PROXY_LISTENERS", "UNIX_BIND_PREFIX", "check_proxy_settings"]

#: Behind a proxy: plain HTTP (loopback or Unix socket only), TLS, or mTLS with the proxy pinned.
PROXY_LISTENERS = ("http", "tls", "mtls")
UNIX_BIND_PREFIX = "unix:"


def _is_loopback_bind(bind: str) -> bool:
    if bind.startswith(UNIX_BIND_PREFIX):
        return True
    # The bind was parsed already: "[v6]:port" or "host:port".
    host = bind[1:].partition("]")[0] if bind.startswith("[") else bind.rpartition(":")[0]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_proxy_settings(
    *,
    client_cert_header: str | None,
    trusted_proxies: Sequence[str],
    proxy_listener: str,
    proxy_ca: Sequence[str],
    proxy_pins: Sequence[str],
    bind: Sequence[str],
) -> None:
    """Refuse proxy settings that are unknown, incomplete, or would weaken the trust rules.

    Raises:
        ConfigurationError: proxy settings without ``client_cert_header``; an unknown format
            or listener (naming the closest); no ``trusted_proxies``, or an entry that is not
            a network; plain HTTP on a non-loopback bind; an ``mtls`` listener without
            ``proxy_ca`` and ``proxy_pins``, or those without an ``mtls`` listener.
    """
    if client_cert_header is None:
        for name, value in (
            ("trusted_proxies", trusted_proxies),
            ("proxy_ca", proxy_ca),
            ("proxy_pins", proxy_pins),
        ):
            if value:
                raise ConfigurationError(f"{name} is set but client_cert_header is not")
        return
    if client_cert_header not in HEADER_FORMATS:
        raise ConfigurationError(
            f"client_cert_header must be one of {', '.join(HEADER_FORMATS)}, got "
            f"{client_cert_header!r}{did_you_mean(client_cert_header, HEADER_FORMATS)}"
        )
    ProxyAllowList.parse(trusted_proxies)
    if proxy_listener not in PROXY_LISTENERS:
        raise ConfigurationError(
            f"proxy_listener must be one of {', '.join(PROXY_LISTENERS)}"
            f"{did_you_mean(proxy_listener, PROXY_LISTENERS)}"
        )
    if proxy_listener == "http":
        # Plain HTTP carries the forwarded credential in clear: loopback or a Unix socket
        # only, where nothing between the proxy and us can read or inject it.
        for address in bind:
            if not _is_loopback_bind(address):
                raise ConfigurationError(
                    f"bind {address!r}: proxy_listener 'http' serves loopback addresses or "
                    "unix: sockets only; use proxy_listener 'tls' or 'mtls' elsewhere"
                )
    if proxy_listener == "mtls":
        if not proxy_ca or not proxy_pins:
            raise ConfigurationError(
                "proxy_listener 'mtls' needs proxy_ca and proxy_pins (the proxy is pinned)"
            )
        PeerPolicy.from_rules(proxy_pins)
    elif proxy_ca or proxy_pins:
        raise ConfigurationError("proxy_ca and proxy_pins need proxy_listener 'mtls'")
