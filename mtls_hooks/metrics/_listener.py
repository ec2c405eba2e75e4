"""The metrics listener: ``GET /metrics`` on its own address, never on the mTLS port.

A plain-HTTP WSGI server in a daemon thread (the stdlib's, as prometheus_client's own
``start_http_server`` uses) around prometheus_client's exposition app. Unlike that app, which
answers metrics on any path, ours answers ``/metrics`` only and 404 elsewhere, so the
listener exposes nothing but metrics. With several worker processes it runs in the
supervisor and sums the workers' files through a ``MultiProcessCollector``.

Bind it to loopback or a scrape network: metrics carry endpoint names and refusal reasons,
not secrets, but they are not for the public.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from mtls_hooks.core._errors import ConfigurationError

__all__ = ["MetricsListener", "multiprocess_registry"]

logger = logging.getLogger("mtls_hooks.metrics")

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


def multiprocess_registry(directory: str) -> Any:
    """Return a registry that sums every worker's values written under ``directory``."""
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry


class MetricsListener:
    """Serve one registry at ``http://HOST:PORT/metrics`` from a daemon thread.

    Args:
        host: the address to bind (``127.0.0.1``, ``::1``, or a scrape network address).
        port: the port; 0 picks a free one (see :attr:`port`).
        registry: the prometheus_client registry to expose.

    Raises:
        ConfigurationError: the address cannot be bound.
    """

    def __init__(self, host: str, port: int, registry: Any) -> None:
        from prometheus_client import make_wsgi_app

        metrics_app = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
            if environ.get("PATH_INFO") != "/metrics":
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"not found: metrics are at /metrics\n"]
            result: Iterable[bytes] = metrics_app(environ, start_response)
            return result

        server_class = _ThreadingServer6 if ":" in host else _ThreadingServer
        try:
            self._server = make_server(host, port, app, server_class, handler_class=_Quiet)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot bind metrics_bind {host}:{port}: {exc.strerror}"
            ) from exc
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="mtls-hooks-metrics", daemon=True
        )

    def start(self) -> MetricsListener:
        """Start serving; returns ``self``."""
        self._thread.start()
        logger.info("event=metrics_listening address=%s:%s", self.host, self.port)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
