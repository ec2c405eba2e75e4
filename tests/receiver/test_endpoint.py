"""The compiled endpoint checks in isolation: source networks, Basic credentials, coercion."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from certs_tool import IssuedCert
from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.core._identity import PeerIdentity
from mtls_hooks.receiver._endpoint import EndpointSettings, compile_endpoint, merge_options
from tests.receiver.conftest import Sender


def settings(sender: Sender, **options: Any) -> EndpointSettings:
    merged = merge_options([("test", {"keys": [sender.key], **options})])
    return compile_endpoint("test", "/hooks", merged)


@pytest.mark.parametrize(
    ("client", "allowed"),
    [
        pytest.param(("10.1.2.3", 1), True, id="inside-v4"),
        pytest.param(("::ffff:10.1.2.3", 1), True, id="v4-mapped-v6"),
        pytest.param(("2001:db8::7", 1), True, id="inside-v6"),
        pytest.param(("192.0.2.1", 1), False, id="outside"),
        pytest.param(None, False, id="no-client"),
        pytest.param(("unix-socket", 0), False, id="not-an-address"),
        pytest.param((), False, id="empty"),
    ],
)
def test_address_allow_list(sender: Sender, client: Any, allowed: bool) -> None:
    ep = settings(sender, ip_allow=["10.0.0.0/8", "2001:db8::/32"])
    assert ep.address_allowed(client) is allowed


def _basic(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        pytest.param(_basic(b"hooks:pa:ss"), True, id="colon-in-password"),
        pytest.param("basic " + _basic(b"hooks:pa:ss")[6:], True, id="scheme-case-insensitive"),
        pytest.param(None, False, id="missing"),
        pytest.param("Bearer abc", False, id="other-scheme"),
        pytest.param("Basic !!!notbase64", False, id="bad-base64"),
        pytest.param(_basic(b"hookspa:ss"), False, id="no-separator-match"),
        pytest.param(_basic(b"hooks"), False, id="no-colon"),
        pytest.param(_basic(b"hooks:pa:sS"), False, id="wrong-password"),
        pytest.param(_basic(b"Hooks:pa:ss"), False, id="wrong-username-case"),
    ],
)
def test_basic_credentials(sender: Sender, header: str | None, ok: bool) -> None:
    ep = settings(sender, basic_auth=("hooks", "pa:ss"))
    assert ep.basic_auth_ok(header) is ok


def test_config_strings_are_coerced(sender: Sender) -> None:
    merged = merge_options(
        [
            ("MTLS_HOOKS_*", {"require_peer": "off", "max_body_bytes": "2048"}),
            ("test", {"keys": [sender.key]}),
        ]
    )
    ep = compile_endpoint("test", "/hooks", merged)
    assert ep.require_peer is False
    assert ep.max_body_bytes == 2048
    with pytest.raises(ConfigurationError, match="must be a number"):
        merge_options([("MTLS_HOOKS_*", {"tolerance_s": "five"})])


def test_identity_verdicts_are_cached_per_certificate(
    sender: Sender, sender_cert: IssuedCert, stranger_cert: IssuedCert
) -> None:
    ep = settings(sender, allow=["uri:spiffe://test.example/payments/*"])
    allowed = PeerIdentity.from_certificate(sender_cert.certificate)
    refused = PeerIdentity.from_certificate(stranger_cert.certificate)
    for _ in range(2):
        assert ep.identity_refusal(allowed) is None
        verdict = ep.identity_refusal(refused)
        assert verdict is not None
        assert verdict[0] == "identity-not-allowed"
    assert ep.identity_refusal(None) is not None


def test_path_must_be_absolute(sender: Sender) -> None:
    with pytest.raises(ConfigurationError, match="path must start"):
        compile_endpoint("x", "hooks", merge_options([("t", {"keys": [sender.key]})]))
