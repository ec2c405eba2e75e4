"""The compiled endpoint checks in isolation: source networks, Basic credentials, coercion."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import pytest

from certs_tool import IssuedCert
from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.core._identity import PeerIdentity
from mtls_hooks.receiver import _endpoint as endpoint_module
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
    no_peer = ep.identity_refusal(None)
    assert no_peer is not None
    assert no_peer[0] == "no-client-certificate"


def test_path_must_be_absolute(sender: Sender) -> None:
    with pytest.raises(ConfigurationError, match="path must start"):
        compile_endpoint("x", "hooks", merge_options([("t", {"keys": [sender.key]})]))


def sha256(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class DigestSpy:
    """Stands in for ``_endpoint``'s ``hmac`` module: records every ``compare_digest``.

    ``verdict`` forces the answer; ``None`` delegates to the real function.
    """

    def __init__(self, verdict: bool | None) -> None:
        self.verdict = verdict
        self.calls: list[tuple[bytes, bytes]] = []

    def compare_digest(self, a: bytes, b: bytes) -> bool:
        self.calls.append((a, b))
        return hmac.compare_digest(a, b) if self.verdict is None else self.verdict


@pytest.mark.parametrize(
    ("raw", "verdict", "ok"),
    [
        # The verdict follows the comparison, whatever the bytes: a `==` would not.
        pytest.param(b"hooks:pa:ss", False, False, id="right-credentials-compared-unequal"),
        pytest.param(b"Hookz:wrong", True, True, id="wrong-credentials-compared-equal"),
        # Both parts always, also when the first already differs (no short-circuit).
        pytest.param(b"hooks:pa:ss", None, True, id="right"),
        pytest.param(b"Hookz:pa:ss", None, False, id="wrong-user"),
        pytest.param(b"hooks:pa:sS", None, False, id="wrong-password"),
        pytest.param(b"Hookz:wrong", None, False, id="both-wrong"),
        pytest.param(b"hookspass", None, False, id="no-colon"),
    ],
)
def test_basic_credentials_are_decided_by_two_constant_time_comparisons(
    sender: Sender,
    monkeypatch: pytest.MonkeyPatch,
    raw: bytes,
    verdict: bool | None,
    ok: bool,
) -> None:
    ep = settings(sender, basic_auth=("hooks", "pa:ss"))
    spy = DigestSpy(verdict)
    monkeypatch.setattr(endpoint_module, "hmac", spy)
    assert ep.basic_auth_ok(_basic(raw)) is ok
    username, _, password = raw.partition(b":")
    # Digests of equal length, so the time taken reveals no length either.
    assert spy.calls == [(sha256(username), sha256(b"hooks")), (sha256(password), sha256(b"pa:ss"))]
