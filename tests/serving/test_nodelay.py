"""Connections the server accepts have Nagle off.

asyncio only sets TCP_NODELAY itself when the listening socket's ``proto`` is IPPROTO_TCP,
which ``socket.create_server`` does not give. Without it a response written as headers then
body waited for the peer's delayed ACK: ~40 ms per keep-alive request (found by bench/).
"""

from __future__ import annotations

import socket

from mtls_hooks.serving._config import ServerConfig
from mtls_hooks.serving._serving import _no_delay, create_sockets


def test_accepted_connections_inherit_tcp_nodelay() -> None:
    config = ServerConfig(
        certfile="unused.pem", keyfile="unused.pem", client_ca=("unused.pem",),
        allow_any_client=True, bind=("127.0.0.1:0",),
    )  # fmt: skip
    [listener] = create_sockets(config)
    with listener:
        assert listener.proto == 0  # why asyncio would not set it by itself
        _no_delay(listener)
        listener.setblocking(True)
        with socket.create_connection(listener.getsockname(), timeout=5):
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
