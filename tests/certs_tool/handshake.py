"""A real TLS handshake on 127.0.0.1 between two stdlib contexts, with bounded timeouts."""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass

from certs_tool import CA, IssuedCert

TIMEOUT_S = 5.0
_GREETING = b"ok"


@dataclass(frozen=True)
class Outcome:
    """What each side saw; ``ok`` only if both finished and the client read the greeting."""

    server_error: BaseException | None
    client_error: BaseException | None
    received: bytes

    @property
    def ok(self) -> bool:
        return (
            self.server_error is None and self.client_error is None and self.received == _GREETING
        )


def server_context(ca: CA, server: IssuedCert, *, crl: bool = False) -> ssl.SSLContext:
    """A server that requires a client certificate chaining to ``ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(ctx)
    if crl:
        ca.configure_crl(ctx)
    server.configure_cert(ctx)
    return ctx


def client_context(ca: CA, client: IssuedCert | None) -> ssl.SSLContext:
    """A client that verifies the server against ``ca`` and presents ``client``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    ca.configure_trust(ctx)
    if client is not None:
        client.configure_cert(ctx)
    return ctx


def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str = "localhost"
) -> Outcome:
    """Run one connection: the server greets after its handshake, the client reads it.

    Under TLS 1.3 the client learns that the server refused its certificate only when it
    reads, hence the greeting.
    """
    errors: dict[str, BaseException] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT_S)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(TIMEOUT_S)
                    with server_ctx.wrap_socket(conn, server_side=True) as tls:
                        tls.sendall(_GREETING)
            except (OSError, ssl.SSLError) as exc:
                errors["server"] = exc

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        received = b""
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as raw,
                client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
            ):
                received = tls.recv(len(_GREETING))
        except (OSError, ssl.SSLError) as exc:
            errors["client"] = exc
        thread.join(TIMEOUT_S)
        assert not thread.is_alive(), "server thread did not finish"
    return Outcome(errors.get("server"), errors.get("client"), received)
