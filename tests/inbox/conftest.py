"""The inbox tests share the receiver's signing sender, certificates and decision log."""

import pytest

from certs_tool import CA
from tests.inbox.processes import RealPki
from tests.receiver.conftest import log_lines, sender, sender_cert, stranger_cert

__all__ = ["log_lines", "real_pki", "sender", "sender_cert", "stranger_cert"]


@pytest.fixture(scope="session")
def real_pki(tmp_path_factory: pytest.TempPathFactory, certs_ca: CA) -> RealPki:
    """Certificates and a signing key on disk for the real-process tests."""
    return RealPki.create(tmp_path_factory.mktemp("inbox-pki"), certs_ca)
