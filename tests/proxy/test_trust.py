"""The trusted-proxy allow-list: exact networks, IPv6 and v4-mapped peers, Unix sockets."""

from __future__ import annotations

import pytest

from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.proxy._trust import ProxyAllowList


@pytest.mark.parametrize(
    ("entries", "client", "allowed"),
    [
        pytest.param(["127.0.0.2/32"], ("127.0.0.2", 5000), True, id="exact"),
        pytest.param(["127.0.0.2/32"], ("127.0.0.1", 5000), False, id="neighbour"),
        pytest.param(["10.0.0.0/8"], ("10.200.3.4", 1), True, id="inside-network"),
        pytest.param(["10.0.0.0/8"], ("11.0.0.1", 1), False, id="outside-network"),
        pytest.param(["::1/128"], ("::1", 1, 0, 0), True, id="ipv6"),
        pytest.param(["10.0.0.0/8"], ("::ffff:10.0.0.1", 1, 0, 0), True, id="v4-mapped"),
        pytest.param(["fe80::/10"], ("fe80::1%eth0", 1, 0, 2), True, id="scoped-v6"),
        pytest.param(["127.0.0.1/32"], None, False, id="unix-not-listed"),
        pytest.param(["unix"], None, True, id="unix-listed"),
        pytest.param(["unix"], ("127.0.0.1", 1), False, id="unix-only"),
        pytest.param(["127.0.0.1/32"], ("not-an-ip", 1), False, id="junk-host"),
        pytest.param(["127.0.0.1/32"], (), False, id="empty-tuple"),
        pytest.param(["127.0.0.1/32"], "127.0.0.1", False, id="not-a-tuple"),
    ],
)
def test_allows(entries: list[str], client: object, allowed: bool) -> None:
    assert ProxyAllowList.parse(entries).allows(client) is allowed


@pytest.mark.parametrize(
    "entries",
    [
        pytest.param([], id="empty"),
        pytest.param(["10.0.0.1/8"], id="host-bits"),
        pytest.param(["localhost"], id="name"),
        pytest.param(["10.0.0.0/33"], id="prefix"),
    ],
)
def test_parse_refuses(entries: list[str]) -> None:
    with pytest.raises(ConfigurationError, match="trusted_proxies"):
        ProxyAllowList.parse(entries)
