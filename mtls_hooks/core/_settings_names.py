"""The receiver's and the sender CLI's ``MTLS_HOOKS_*`` names, importable without Quart.

The server (:mod:`mtls_hooks.serving._config`) and the receiver
(:mod:`mtls_hooks.receiver._receiver`) read the same environment under one prefix: each must
accept the other's names there and still refuse a misspelt one. The server's names are its
:class:`~mtls_hooks.ServerConfig` fields; the receiver's are listed here, light enough for
the server's configuration to import.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CONFIG_PREFIX",
    "ENDPOINT_OPTION_NAMES",
    "RECEIVER_NAMES",
    "SENDER_NAMES",
    "STORE_NAMES",
]

CONFIG_PREFIX: Final = "MTLS_HOOKS_"
# The keys of mtls_hooks.receiver._endpoint.EndpointOptions, in its order (a test keeps them equal).
ENDPOINT_OPTION_NAMES: Final = (
    "keys",
    "tolerance_s",
    "pins",
    "allow",
    "require_peer",
    "ip_allow",
    "basic_auth",
    "max_body_bytes",
    "content_types",
    "body_timeout_s",
    "event_type",
    "rate_limit",
    "rate_limit_per_endpoint",
    "quart_request",
    "mode",
)
# The receiver's own settings beside the endpoint options: endpoints, the dedupe store and
# the inbox.
STORE_NAMES: Final = (
    "endpoints",
    "dedupe_url",
    "dedupe_path",
    "dedupe_namespace",
    "retention_s",
    "lease_s",
    "dedupe_max_entries",
    "inbox_url",
    "inbox_concurrency",
    "inbox_max_attempts",
    "inbox_max_wait_s",
    "inbox_lease_s",
    "inbox_handler_timeout_s",
)
# Every receiver setting, lowercase, as the suffix of MTLS_HOOKS_<NAME>.
RECEIVER_NAMES: Final = frozenset((*ENDPOINT_OPTION_NAMES, *STORE_NAMES))
# `mtls-hooks send` reads $MTLS_HOOKS_SECRET: a process that sends and receives has it too.
SENDER_NAMES: Final = frozenset({"secret"})
