"""The sender checks the receiver's host name, in both twins, before one byte of HTTP.

A receiver whose certificate chains to the trusted CA but names another host is a
different receiver (or a stolen certificate of one): the delivery fails with
:class:`TLSError`, is not retried, and the server counts zero application bytes. A pin on
that certificate's key does not excuse the wrong name: pins narrow verification, they never
replace it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mtls_hooks.core._errors import TLSError
from mtls_hooks.core._tls import create_server_context
from tests.sender.conftest import KINDS, SECRET, FakeTime, SenderPki, deliver, exact_policy
from tests.sender.scripted import ScriptedServer

Serve = Callable[..., ScriptedServer]
OTHER_HOST = "receiver.other.example"


@pytest.fixture(scope="module")
def other_host(pki: SenderPki, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A server certificate from the trusted CA for another host (and another address)."""
    directory = tmp_path_factory.mktemp("other-host")
    issued = pki.ca.issue_server(OTHER_HOST, "127.0.0.2")
    issued.chain_pem.write_to_path(directory / "server.pem")
    issued.private_key_pem().write_to_path(directory / "server.key")
    return directory, issued.spki_pin


def _kwargs(pki: SenderPki, fake_time: FakeTime, **extra: object) -> dict[str, Any]:
    return {"signing_keys": SECRET, **pki.client(), **fake_time.kwargs(),
            "retry": exact_policy(), **extra}  # fmt: skip


def _serve_other_host(pki: SenderPki, other_host: tuple[Path, str], serve: Serve) -> ScriptedServer:
    directory, _ = other_host
    context = create_server_context(
        certfile=directory / "server.pem",
        keyfile=directory / "server.key",
        client_ca=[pki.ca_file],
        peer_policy=None,
    )
    return serve([], context)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "pinned", [pytest.param(False, id="unpinned"), pytest.param(True, id="key-pinned")]
)
def test_receiver_naming_another_host_is_refused_with_zero_bytes(
    kind: str,
    pinned: bool,
    *,
    pki: SenderPki,
    other_host: tuple[Path, str],
    fake_time: FakeTime,
    serve: Serve,
) -> None:
    server = _serve_other_host(pki, other_host, serve)
    extra = {"pins": [other_host[1]]} if pinned else {}
    with pytest.raises(TLSError) as caught:
        deliver(kind, _kwargs(pki, fake_time, **extra), server.url(), {"n": 1})
    # The name check, not the chain: OpenSSL's X509_V_ERR_IP_ADDRESS_MISMATCH for an IP URL.
    assert "IP address mismatch, certificate is not valid for '127.0.0.1'" in str(caught.value)
    assert "does not match the URL host" in str(caught.value)
    assert caught.value.attempts == 1  # not retryable: a retry cannot change the name
    assert fake_time.sleeps == []
    assert caught.value.result is not None
    assert caught.value.result.attempts[0].error == "SSLCertVerificationError"
    server.stop()  # join the connection thread before counting
    assert server.http_bytes == 0
    assert server.requests == []
    assert server.connections == 0  # the server never completed a handshake either


@pytest.mark.parametrize("kind", KINDS)
def test_receiver_naming_the_url_host_is_served(
    kind: str, pki: SenderPki, fake_time: FakeTime, serve: Serve
) -> None:
    """The twin: the same CA, a certificate for 127.0.0.1, the same sender."""
    server = serve([])
    result = deliver(kind, _kwargs(pki, fake_time), server.url(), {"n": 1})
    assert result.ok
    server.stop()
    assert [r.body for r in server.requests] == [b'{"n":1}']
    assert server.http_bytes > 0
