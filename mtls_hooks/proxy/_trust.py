"""Which TCP peers may forward a client certificate: the ``trusted_proxies`` allow-list.

Only an explicit list of proxy addresses makes a forwarded certificate header trustworthy.
Counting hops, as Werkzeug's and Hypercorn's ProxyFix do, never looks at who connected.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from mtls_hooks.core._errors import ConfigurationError

__all__ = ["UNIX_PEER", "ProxyAllowList"]

#: The ``trusted_proxies`` entry that trusts every peer of a Unix-socket listener (which has
#: no address; the socket's file permissions decide who can connect).
UNIX_PEER = "unix"

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ProxyAllowList:
    """CIDR networks (and optionally ``unix``) whose connections may forward certificates.

    Attributes:
        networks: the trusted networks.
        unix: whether peers of a Unix-socket listener are trusted.
    """

    networks: tuple[_Network, ...]
    unix: bool = False

    @classmethod
    def parse(cls, entries: Iterable[str]) -> ProxyAllowList:
        """Parse ``"10.0.0.0/8"``, ``"127.0.0.2/32"``, ``"::1/128"``, ``"unix"``.

        Raises:
            ConfigurationError: an empty list, or an entry that is not a network (host bits
                set, as in ``10.0.0.1/8``, are refused rather than guessed).
        """
        networks: list[_Network] = []
        unix = False
        for entry in entries:
            text = entry.strip()
            if text.lower() == UNIX_PEER:
                unix = True
                continue
            try:
                networks.append(ipaddress.ip_network(text, strict=True))
            except ValueError as exc:
                raise ConfigurationError(
                    f"trusted_proxies: {entry!r} is not a CIDR network ({exc})"
                ) from exc
        if not networks and not unix:
            raise ConfigurationError(
                "trusted_proxies is empty: list the proxy addresses (CIDR) that may forward "
                "client certificates; there is no default"
            )
        return cls(tuple(networks), unix)

    def allows(self, client: object) -> bool:
        """True when an ASGI ``scope["client"]`` is a trusted proxy.

        ``None`` (a Unix-socket peer, for Hypercorn) is trusted only with ``unix``; an
        unparsable address never is.
        """
        if client is None:
            return self.unix
        if not isinstance(client, (tuple, list)) or not client:
            return False
        return _host_allowed(self.networks, str(client[0]))


# A proxy connects from one or a few addresses: each is looked up once (bounded).
@functools.lru_cache(maxsize=1024)
def _host_allowed(networks: tuple[_Network, ...], host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:10.0.0.1 on a dual-stack socket
    return any(address in network for network in networks)
