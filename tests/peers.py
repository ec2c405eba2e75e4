"""Real peers the tests need: binaries (nginx, curl, openssl) and servers (PostgreSQL, Redis).

A test that needs one may skip, with a reason, only outside CI: under ``CI=true`` a missing
peer fails the test, because ``.ci/install-peers`` should have installed and started it.
"""

from __future__ import annotations

import os
import shutil
import socket
from typing import NoReturn

import pytest

__all__ = ["PG_URL", "REDIS_URL", "missing", "need_binary", "need_tcp"]

_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")
PG_URL = os.environ.get("MTLS_HOOKS_TEST_PG_URL", "postgresql://root@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("MTLS_HOOKS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def missing(what: str) -> NoReturn:
    """Fail under CI, skip elsewhere, naming the missing peer."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing in CI: .ci/install-peers should have provided it")
    pytest.skip(f"{what} is not available (run .ci/install-peers)")


def need_binary(name: str) -> str:
    """Return the path of executable ``name`` (sbin directories included), or skip/fail."""
    search = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
    path = shutil.which(name, path=search)
    if path is None:
        missing(name)
    return path


def need_tcp(what: str, host: str, port: int) -> None:
    """Skip/fail unless something accepts TCP connections at ``host:port``."""
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        missing(f"{what} at {host}:{port}")
