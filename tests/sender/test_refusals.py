"""Failures no retry can fix: refused fast, with a message an integrator can act on."""

from __future__ import annotations

import errno
import re
import ssl
from collections.abc import Callable
from typing import Any

import pytest

from mtls_hooks.core._errors import ConfigurationError, TLSError
from mtls_hooks.core._tls import create_client_context
from mtls_hooks.sender._outcomes import classify_exception
from mtls_hooks.sender._sync import WebhookSender
from tests.sender.conftest import KINDS, SECRET, FakeTime, SenderPki, deliver, exact_policy
from tests.sender.scripted import ScriptedServer

Serve = Callable[..., ScriptedServer]


def _kwargs(pki: SenderPki, fake_time: FakeTime, **tls: object) -> dict[str, Any]:
    return {"signing_keys": SECRET, **pki.client(), **fake_time.kwargs(),
            "retry": exact_policy(), **tls}  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_ca(kind: str, pki: SenderPki, fake_time: FakeTime, serve: Serve) -> None:
    server = serve([])
    other_ca = pki.path("other-ca.pem")
    with pytest.raises(TLSError) as caught:
        deliver(kind, _kwargs(pki, fake_time, ca_file=other_ca), server.url(), b"{}")
    # OpenSSL's reason depends on whether the server sends its root: "unable to get local
    # issuer certificate" or "self-signed certificate in certificate chain".
    assert re.fullmatch(
        rf"server certificate not trusted by {re.escape(str(other_ca))} \((unable to get local "
        r"issuer certificate|self-signed certificate in certificate chain)\)",
        str(caught.value),
    )
    assert isinstance(caught.value.__cause__, Exception)
    assert caught.value.attempts == 1
    assert fake_time.sleeps == []
    assert server.requests == []


@pytest.mark.parametrize("kind", KINDS)
def test_pin_mismatch_sends_zero_bytes_of_http(
    kind: str, pki: SenderPki, fake_time: FakeTime, serve: Serve
) -> None:
    server = serve([])
    wrong_pin = pki.ca.issue_client(common_name="not the server").spki_pin
    with pytest.raises(TLSError) as caught:
        deliver(kind, _kwargs(pki, fake_time, pins=[wrong_pin]), server.url(), b"{}")
    assert str(caught.value).startswith(f"server SPKI {pki.server_pin} not in pins")
    assert fake_time.sleeps == []
    assert caught.value.result is not None
    assert caught.value.result.attempts[0].error == "PinError"
    server.stop()  # join the connection thread before counting
    assert server.http_bytes == 0
    assert server.requests == []


@pytest.mark.parametrize("kind", KINDS)
def test_matching_pin_delivers(
    kind: str, pki: SenderPki, fake_time: FakeTime, serve: Serve
) -> None:
    server = serve([])
    backup = pki.ca.issue_client(common_name="backup key").spki_pin
    result = deliver(
        kind, _kwargs(pki, fake_time, pins=[backup, pki.server_pin]), server.url(), b"{}"
    )
    assert result.ok


@pytest.mark.parametrize("kind", KINDS)
def test_expired_client_certificate(
    kind: str, pki: SenderPki, fake_time: FakeTime, serve: Serve
) -> None:
    server = serve([])
    expired = {"certfile": pki.path("expired.pem"), "keyfile": pki.path("expired.key")}
    with pytest.raises(TLSError, match=r"receiver refused our client certificate \(.*expired"):
        deliver(kind, _kwargs(pki, fake_time, **expired), server.url(), b"{}")
    assert fake_time.sleeps == []
    assert server.requests == []


def test_wrong_passphrase_is_a_configuration_error(pki: SenderPki) -> None:
    tls = pki.client("encrypted") | {"key_password": b"wrong"}
    with pytest.raises(ConfigurationError, match="wrong passphrase for"):
        WebhookSender(signing_keys=SECRET, **tls)


def test_pins_need_our_context(pki: SenderPki) -> None:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    with pytest.raises(ConfigurationError, match="pins need the context"):
        WebhookSender(signing_keys=SECRET, ssl_context=context, pins=[pki.server_pin])


@pytest.mark.parametrize(
    ("url", "payload", "event_type", "match"),
    [
        pytest.param("http://127.0.0.1/h", {}, None, "must be https", id="plain-http"),
        pytest.param("https:///nohost", {}, None, "must be https", id="no-host"),
        pytest.param("https://127.0.0.1/h", b"{}", "t", "bytes are sent verbatim", id="bytes+type"),
        pytest.param("https://127.0.0.1/h", {1j}, None, "not JSON-serialisable", id="not-json"),
    ],
)
def test_bad_delivery_arguments(
    pki: SenderPki, url: str, payload: object, event_type: str | None, match: str
) -> None:
    with (
        WebhookSender(signing_keys=SECRET, **pki.client()) as sender,
        pytest.raises(ConfigurationError, match=match),
    ):
        sender.send(url, payload, event_type=event_type)


def test_bad_webhook_id_is_not_retried(pki: SenderPki, fake_time: FakeTime, serve: Serve) -> None:
    server = serve([])
    with pytest.raises(ConfigurationError, match="webhook_id"):
        deliver("sync", _kwargs(pki, fake_time), server.url(), b"{}", webhook_id="has.dot")
    assert server.requests == []


def test_secrets_stay_out_of_reprs_and_errors(
    pki: SenderPki, fake_time: FakeTime, serve: Serve
) -> None:
    server = serve([])
    kwargs = _kwargs(pki, fake_time, ca_file=pki.path("other-ca.pem"))
    kwargs["key_password"] = b"correct horse"
    kwargs.update(pki.client("encrypted") | {"ca_file": pki.path("other-ca.pem")})
    with WebhookSender(**kwargs) as sender:
        text = repr(sender)
        with pytest.raises(TLSError) as caught:
            sender.send(server.url(), b"{}")
    result = caught.value.result
    assert result is not None
    texts = [text, str(caught.value), repr(result), *(str(a) for a in result.attempts)]
    for secret in (SECRET, SECRET.removeprefix("whsec_"), "correct horse"):
        assert all(secret not in t for t in texts)


def test_context_from_create_client_context_is_used_as_is(
    pki: SenderPki, fake_time: FakeTime, serve: Serve
) -> None:
    server = serve([])
    context = create_client_context(
        ca_file=pki.ca_file, certfile=pki.path("client.pem"), keyfile=pki.path("client.key")
    )
    kwargs = {"signing_keys": SECRET, "ssl_context": context, **fake_time.kwargs()}
    assert deliver("sync", kwargs, server.url(), b"{}").ok


@pytest.mark.parametrize(
    "exc",
    [
        pytest.param(
            ssl.SSLZeroReturnError(6, "TLS/SSL connection has been closed"), id="close-notify"
        ),
        pytest.param(ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), id="eof"),
        pytest.param(ConnectionResetError(errno.ECONNRESET, "reset"), id="reset"),
    ],
)
def test_a_session_ended_under_us_is_retried_with_the_certificate_hint(exc: OSError) -> None:
    # Our receiver refuses an unpinned TLS 1.3 client after the client's handshake is done:
    # the client meets the end of the session on its first read or write, in one of these.
    failure = classify_exception(exc, trust="ca.pem")
    assert failure.retryable
    assert "the receiver may be refusing our client certificate" in str(failure)


def test_other_transport_errors_carry_no_certificate_hint() -> None:
    failure = classify_exception(OSError(errno.EHOSTUNREACH, "no route"), trust="ca.pem")
    assert failure.retryable
    assert "client certificate" not in str(failure)
