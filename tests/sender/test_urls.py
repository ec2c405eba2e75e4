"""Webhook URLs: an unusable one is a ConfigurationError before any I/O, in both twins."""

from __future__ import annotations

import aiohttp
import httpx
import pytest

from mtls_hooks._errors import ConfigurationError
from mtls_hooks._outcomes import classify_exception
from mtls_hooks._sender import _url_problem
from tests.sender.conftest import KINDS, FakeTime, SenderPki, deliver, exact_kwargs

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
    assert _url_problem(url) is None


@pytest.mark.parametrize(
    "exc",
    [
        pytest.param(httpx.InvalidURL("Invalid non-printable ASCII character"), id="httpx"),
        pytest.param(UnicodeError("label empty or too long"), id="unicode"),
        pytest.param(aiohttp.InvalidURL("https://alice:TOPSECRET@h/", "bad"), id="aiohttp"),
    ],
)
def test_a_url_the_library_refuses_is_final(exc: Exception) -> None:
    # The boundary behind _url_problem: never retried, raised as a ConfigurationError.
    failure = classify_exception(exc, trust="the CA")
    assert (failure.kind, failure.retryable) == ("url", False)
    assert "TOPSECRET" not in str(failure)
