"""pytest fixtures for a private test PKI, registered through the ``pytest11`` entry point.

Fixtures (all session-scoped; with pytest-xdist each worker has its own CA):

* ``certs_ca``: a :class:`~certs_tool.CA` (EC P-256 root);
* ``certs_server``: a server certificate for ``localhost``, ``127.0.0.1`` and ``::1``;
* ``certs_client``: a client certificate, CN ``test-client``, SPIFFE ID
  ``spiffe://test.example/client``;
* ``certs_issue_client``: ``certs_ca.issue_client`` itself, to issue more identities.

certs_tool is imported inside the fixtures, not here: pytest imports entry-point plugins
before pytest-cov starts measuring, and an import at the top would leave certs_tool's
module-level lines uncovered in every project that installs it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from certs_tool import CA, IssuedCert

__all__ = ["certs_ca", "certs_client", "certs_issue_client", "certs_server"]

CLIENT_COMMON_NAME = "test-client"
CLIENT_SPIFFE_ID = "spiffe://test.example/client"
SERVER_HOSTS = ("localhost", "127.0.0.1", "::1")


@pytest.fixture(scope="session")
def certs_ca() -> CA:
    """A test root CA, one per test session (per xdist worker)."""
    from certs_tool import CA  # imported late: see the module docstring

    return CA(name="certs-tool pytest CA")


@pytest.fixture(scope="session")
def certs_server(certs_ca: CA) -> IssuedCert:
    """A server certificate for localhost, 127.0.0.1 and ::1, issued by ``certs_ca``."""
    return certs_ca.issue_server(*SERVER_HOSTS)


@pytest.fixture(scope="session")
def certs_client(certs_ca: CA) -> IssuedCert:
    """A client certificate (CN test-client, spiffe://test.example/client) from ``certs_ca``."""
    return certs_ca.issue_client(CLIENT_COMMON_NAME, uris=[CLIENT_SPIFFE_ID])


@pytest.fixture(scope="session")
def certs_issue_client(certs_ca: CA) -> Callable[..., IssuedCert]:
    """Issue more client identities from ``certs_ca``: the arguments of ``CA.issue_client``."""
    return certs_ca.issue_client
