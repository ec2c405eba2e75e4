"""Webhook URLs: an unusable one is a ConfigurationError before any I/O, in both twins; a
password in one never shows in a repr, message or attempt."""

from __future__ import annotations

import base64
from collections.abc import Callable

import aiohttp
import httpx
import pytest

from mtls_hooks.cli._main import main
from mtls_hooks.core._errors import ConfigurationError, EndpointGoneError, StatusError
from mtls_hooks.sender._base import WebhookMessage
from mtls_hooks.sender._outcomes import classify_exception
from mtls_hooks.sender._results import redact_url
from mtls_hooks.sender._urls import url_problem
from tests.sender.conftest import KINDS, SECRET, FakeTime, SenderPki, deliver, exact_kwargs
from tests.sender.scripted import ScriptedServer, Status

Serve = Callable[..., ScriptedServer]
PASSWORD = "TOPSECRET"

UNUSABLE_URLS = [
    pytest.param("https://\x00host/x", id="nul-in-host"),
    pytest.param("https://127.0.0.1:1/x\r\nX: y", id="crlf"),
    pytest.param("https://host/\udcff", id="lone-surrogate"),
    pytest.param("https://a..b/x", id="empty-label"),
    pytest.param("https://.a/x", id="leading-dot"),
    pytest.param("https://xn--/x", id="empty-punycode"),
    pytest.param("https://xn--zz-zz.example/x", id="bad-punycode"),
    pytest.param("https://a" + "b" * 300 + ".com/", id="long-label"),
    pytest.param("https://" + "a." * 130 + "com/", id="long-name"),
    pytest.param("https://exa mple.com/x", id="space-in-host"),
    pytest.param("https://ex%41mple.com/x", id="percent-in-host"),
    pytest.param("https://999.1.1.1/x", id="bad-ipv4"),
    pytest.param("https://\u2168.example/x", id="not-idna-2008"),
    pytest.param("https://[::1/x", id="unclosed-ipv6"),
    pytest.param("https://ex\u00e4mple.com:99999/", id="port-out-of-range"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("url", UNUSABLE_URLS)
def test_unusable_url_is_a_configuration_error(
    kind: str, url: str, pki: SenderPki, fake_time: FakeTime
) -> None:
    with pytest.raises(ConfigurationError, match="webhook URL"):
        deliver(kind, exact_kwargs(pki, fake_time), url, b"{}")
    assert fake_time.sleeps == []  # refused, not retried


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1:8443/hook",
        "https://[::1]:8443/hook",
        "https://hooks.example./hook",
        "https://my_receiver.internal/hook",
        "https://B\u00fccher.example/hook",
        "https://xn--bcher-kva.example/hook",
        "https://hooks.example/a b?c=\u00e9",
    ],
)
def test_usable_urls_pass(url: str) -> None:
    assert url_problem(url) is None


@pytest.mark.parametrize(
    "exc",
    [
        pytest.param(httpx.InvalidURL("Invalid non-printable ASCII character"), id="httpx"),
        pytest.param(UnicodeError("label empty or too long"), id="unicode"),
        pytest.param(aiohttp.InvalidURL("https://alice:TOPSECRET@h/", "bad"), id="aiohttp"),
    ],
)
def test_a_url_the_library_refuses_is_final(exc: Exception) -> None:
    # The boundary behind url_problem: never retried, raised as a ConfigurationError.
    failure = classify_exception(exc, trust="the CA")
    assert (failure.kind, failure.retryable) == ("url", False)
    assert "TOPSECRET" not in str(failure)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("https://alice:TOPSECRET@host/x", "https://alice:***@host/x"),
        ("https://alice:@host/x", "https://alice:***@host/x"),
        ("https://tok_TOPSECRET@host/x", "https://***@host/x"),
        ("https://alice:TOP@SECRET@host:8443/x", "https://alice:***@host:8443/x"),
        ("https://host/a@b?c=d@e#f@g", "https://host/a@b?c=d@e#f@g"),
        ("https://host/x", "https://host/x"),
        (
            "see https://a:TOPSECRET@h/ and https://b:TOPSECRET@k/",
            "see https://a:***@h/ and https://b:***@k/",
        ),
        ("https://alice:TOPSECRET@bad..host\x00/", "https://alice:***@bad..host\x00/"),
    ],
)
def test_redact_url(text: str, shown: str) -> None:
    assert redact_url(text) == shown


@pytest.mark.parametrize(
    "url",
    [
        "https://alice:TOPSECRET@a..b/x",
        "https://alice:TOPSECRET@\x00host/x",
        "http://alice:TOPSECRET@host/x",
        "https://alice:TOPSECRET@host:/x",
        "https://alice:TOPSECRET@[::1/x",
    ],
)
def test_url_problems_never_show_the_password(url: str) -> None:
    problem = url_problem(url)
    assert problem is not None
    assert "alice:***@" in problem
    assert PASSWORD not in problem


def test_message_repr_hides_the_password() -> None:
    message = WebhookMessage("https://alice:TOPSECRET@host/x", {"n": 1}, "t.n")
    assert repr(message) == (
        "WebhookMessage(url='https://alice:***@host/x', payload={'n': 1}, "
        "event_type='t.n', webhook_id=None)"
    )


@pytest.mark.parametrize("kind", KINDS)
def test_userinfo_is_sent_as_basic_auth_and_never_shown(
    kind: str, pki: SenderPki, fake_time: FakeTime, serve: Serve
) -> None:
    server = serve([Status(307, {"Location": "https://bob:TOPSECRET@elsewhere/"}), Status(410)])
    url = server.url().replace("https://", "https://alice:TOPSECRET@")
    with pytest.raises(StatusError) as redirected:
        deliver(kind, exact_kwargs(pki, fake_time), url, b"{}")
    with pytest.raises(EndpointGoneError) as gone:
        deliver(kind, exact_kwargs(pki, fake_time), url, b"{}")

    basic = "Basic " + base64.b64encode(b"alice:TOPSECRET").decode()
    assert [r.headers.get("authorization") for r in server.requests] == [basic, basic]
    for error in (redirected.value, gone.value):
        assert error.result is not None
        shown = [str(error), repr(error.result), *map(str, error.result.attempts)]
        assert all(PASSWORD not in text for text in shown), shown
    assert "alice:***@127.0.0.1" in str(gone.value)
    assert "Location: https://bob:***@elsewhere/" in str(redirected.value)


def test_cli_never_prints_the_password(
    pki: SenderPki,
    serve: Serve,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    server = serve([])
    url = server.url().replace("https://", "https://alice:TOPSECRET@")
    argv = ["send", url, "--cert", str(pki.path("client.pem")), "--key",
            str(pki.path("client.key")), "--ca", str(pki.ca_file), "--secret-env",
            "WEBHOOK_SECRET"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "to https://alice:***@127.0.0.1:" in out
    assert PASSWORD not in out
