"""Small helpers the shared stores have in common: namespaces, keys and printable URLs."""

from __future__ import annotations

import re
import urllib.parse
from typing import Final

from mtls_hooks.core._errors import ConfigurationError

__all__ = [
    "DEFAULT_NAMESPACE",
    "PG_NOW_SQL",
    "check_namespace",
    "one_line",
    "redact_url",
    "split_key",
]

DEFAULT_NAMESPACE: Final = "mtls_hooks"
# A PostgreSQL identifier without quoting (the table names add at most 7 characters to the
# 63-byte limit) and a Redis key prefix without separators.
_NAMESPACE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,50}")
# PostgreSQL's clock unless the caller injects one (tests): a NULL parameter selects the server's.
PG_NOW_SQL: Final = "COALESCE({now}::float8, extract(epoch FROM statement_timestamp())::float8)"


def check_namespace(namespace: str) -> str:
    """Return ``namespace`` if it is a plain identifier of at most 51 characters.

    Raises:
        ConfigurationError: anything else.
    """
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise ConfigurationError(
            f"dedupe namespace {namespace!r} must be letters, digits and '_' "
            "(at most 51, not starting with a digit)"
        )
    return namespace


def split_key(key: str) -> tuple[str, str]:
    """Split a receiver key ``"<endpoint> <webhook-id>"`` at its last space.

    Webhook ids never contain a space (Standard Webhooks ids are printable tokens, and the
    receiver refuses others), an endpoint name may.
    """
    endpoint, _, webhook_id = key.rpartition(" ")
    return endpoint, webhook_id


def redact_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``, for logs and errors."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rpartition("@")
        userinfo = netloc[0].partition(":")[0]
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}:***@{netloc[2]}"))
    except ValueError:
        return "<unparsable URL>"


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (drivers put newlines and hints in theirs)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
