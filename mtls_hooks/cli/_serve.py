"""``mtls-hooks serve MODULE:APP``: run a receiver over pinned mTLS.

Settings merge with CLI > environment (``MTLS_HOOKS_*``) > ``--config`` file; a repeated
flag replaces the file's list rather than extending it, so what you type is what is served.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from mtls_hooks.serving._config import ServerConfig

__all__ = ["add_parser", "run"]

_EPILOG = """\
examples:
  mtls-hooks serve myapp:app --cert server.pem --key server.key --client-ca clients-ca.pem \\
      --pin sha256/AAAA...= --bind 0.0.0.0:8443 --bind [::]:8443
  mtls-hooks serve myapp:app --config receiver.toml --workers 4 --watch --loop uvloop
  mtls-hooks serve myapp:app --client-cert-header nginx --trusted-proxy 127.0.0.1/32 \\
      --client-ca clients-ca.pem --pin sha256/AAAA...= --bind 127.0.0.1:8080

A client the CA vouches for but no --pin/--allow-san admits is refused during the TLS
handshake (a TLS 1.2 client reads alert access_denied, a TLS 1.3 one a clean close); the
reason is logged on 'mtls_hooks.tls'. Send SIGHUP to reload certificates, CA, CRL and pins
without a restart.
"""


def add_parser(subparsers: Any) -> None:
    """Register the ``serve`` subcommand on the dispatcher's subparsers."""
    parser = subparsers.add_parser(
        "serve",
        help="serve an ASGI app over pinned mTLS (Hypercorn)",
        description="Serve an ASGI app (e.g. Quart) over mutual TLS with client pinning.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("app", metavar="MODULE:APP", help="the ASGI app to serve, e.g. myapp:app")
    parser.add_argument("--config", metavar="FILE", help="TOML file (keys at top or in [server])")
    parser.add_argument("--cert", dest="certfile", metavar="PEM", help="server certificate chain")
    parser.add_argument("--key", dest="keyfile", metavar="PEM", help="server private key")
    parser.add_argument(
        "--key-password-env", metavar="VAR", help="environment variable holding the passphrase"
    )
    parser.add_argument(
        "--client-ca", action="append", metavar="PEM", help="client CA bundle (repeatable)"
    )
    parser.add_argument("--crl", action="append", metavar="FILE", help="client CA CRL (repeatable)")
    parser.add_argument(
        "--pin",
        dest="pins",
        action="append",
        metavar="PIN",
        help="admitted client: sha256/<base64> SPKI pin or SHA-256 fingerprint (repeatable)",
    )
    parser.add_argument(
        "--allow-san",
        dest="allow",
        action="append",
        metavar="RULE",
        help="admitted client identity: dns:, uri: (spiffe://td/path/*), email:, subject: "
        "(repeatable)",
    )
    parser.add_argument(
        "--allow-any-client",
        action="store_const",
        const=True,
        help="admit every client the CA vouches for (no pinning)",
    )
    parser.add_argument(
        "--bind", action="append", metavar="ADDR", help="HOST:PORT or [V6]:PORT (repeatable)"
    )
    parser.add_argument("--workers", type=int, metavar="N", help="worker processes")
    parser.add_argument(
        "--loop",
        metavar="LOOP",
        help="event loop of each worker: asyncio (default) or uvloop (the 'uvloop' extra)",
    )
    parser.add_argument(
        "--watch",
        dest="watch_files",
        action="store_const",
        const=True,
        help="reload when certificate, key, CA, CRL or config files change",
    )
    parser.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING, ...")
    parser.add_argument(
        "--metrics-bind",
        metavar="ADDR",
        help="serve Prometheus metrics at http://ADDR/metrics (its own port; default off)",
    )
    proxy = parser.add_argument_group(
        "behind a TLS-terminating proxy",
        "the proxy forwards the client certificate in a header; it is read only from "
        "--trusted-proxy peers and re-verified against --client-ca, --crl and the pins",
    )
    proxy.add_argument(
        "--client-cert-header",
        metavar="FORMAT",
        help="rfc9440, xfcc (Envoy), nginx, alb or traefik: turns proxy mode on",
    )
    proxy.add_argument(
        "--trusted-proxy",
        dest="trusted_proxies",
        action="append",
        metavar="CIDR",
        help="network allowed to forward certificates, or 'unix' (repeatable; no default)",
    )
    proxy.add_argument(
        "--proxy-listener",
        metavar="KIND",
        help="http (loopback or unix: bind only, the default), tls, or mtls",
    )
    proxy.add_argument(
        "--proxy-ca", action="append", metavar="PEM", help="CA of the proxy's certificate (mtls)"
    )
    proxy.add_argument(
        "--proxy-pin",
        dest="proxy_pins",
        action="append",
        metavar="PIN",
        help="SPKI pin or fingerprint of the proxy (mtls; repeatable)",
    )
    parser.set_defaults(run=run)


_OVERRIDES = (
    "certfile",
    "keyfile",
    "key_password_env",
    "client_ca",
    "crl",
    "pins",
    "allow",
    "allow_any_client",
    "bind",
    "workers",
    "loop",
    "watch_files",
    "log_level",
    "metrics_bind",
    "client_cert_header",
    "trusted_proxies",
    "proxy_listener",
    "proxy_ca",
    "proxy_pins",
)


def run(args: argparse.Namespace) -> int:
    """Load the configuration and the app, then serve until SIGINT/SIGTERM.

    Returns:
        0 after a clean shutdown, 1 if a worker died.

    Raises:
        ConfigurationError: bad settings or files, or an app that cannot be imported.
    """
    from mtls_hooks.serving._workers import load_app, serve

    overrides: dict[str, Any] = {name: getattr(args, name) for name in _OVERRIDES}
    config = ServerConfig.load(config_file=args.config, environ=os.environ, overrides=overrides)
    log_format = "%(asctime)s [%(process)d] %(levelname)s %(name)s %(message)s"
    logging.basicConfig(level=config.log_level, format=log_format)
    # Like hypercorn and uvicorn: MODULE is looked up from the working directory.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    app = load_app(args.app)
    return serve(args.app if config.workers > 1 else app, config)
