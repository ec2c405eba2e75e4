"""PeerPolicy: pin parsing by length, fingerprints, SAN and SPIFFE rules."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib

import pytest

from mtls_hooks import ConfigurationError, PeerIdentity, PeerPolicy
from mtls_hooks.core._policy import normalize_fingerprint, normalize_spki_pin

SLASH_DIGEST = b"\xfc" + bytes(31)  # base64 starts with '/'
SLASH_PIN = "sha256/" + base64.b64encode(SLASH_DIGEST).decode()
OTHER_PIN = "sha256/" + base64.b64encode(hashlib.sha256(b"other").digest()).decode()
FINGERPRINT = hashlib.sha256(b"cert").hexdigest()


def identity(
    *,
    pin: str = OTHER_PIN,
    uris: tuple[str, ...] = (),
    dns: tuple[str, ...] = (),
    emails: tuple[str, ...] = (),
    subject: str = "CN=peer",
    fingerprint: str = FINGERPRINT,
) -> PeerIdentity:
    now = dt.datetime.now(dt.UTC)
    return PeerIdentity(
        subject=subject,
        issuer="CN=ca",
        serial=1,
        not_before=now,
        not_after=now,
        dns_names=dns,
        uris=uris,
        emails=emails,
        ip_addresses=(),
        spki_pin=pin,
        fingerprint=fingerprint,
    )


def test_slash_leading_pin_parses_by_length_in_both_forms() -> None:
    assert SLASH_PIN.startswith("sha256//")  # looks like curl's separator, but is not
    assert normalize_spki_pin(SLASH_PIN) == SLASH_PIN
    curl_form = "sha256//" + SLASH_PIN[len("sha256/") :]
    assert normalize_spki_pin(curl_form) == SLASH_PIN
    assert normalize_spki_pin(SLASH_PIN[len("sha256/") :]) == SLASH_PIN
    assert PeerPolicy.from_rules([curl_form]).allows(identity(pin=SLASH_PIN))


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("sha256/abc", id="short"),
        pytest.param("sha256/" + "!" * 44, id="not-base64"),
        pytest.param("sha256/" + base64.b64encode(bytes(33)).decode(), id="wrong-length"),
        pytest.param("", id="empty"),
        pytest.param("md5/" + base64.b64encode(bytes(32)).decode(), id="wrong-prefix"),
    ],
)
def test_malformed_pins_are_configuration_errors(text: str) -> None:
    with pytest.raises(ConfigurationError):
        PeerPolicy.from_rules([text])


def test_fingerprint_forms() -> None:
    colon = ":".join(FINGERPRINT[i : i + 2] for i in range(0, 64, 2)).upper()
    assert normalize_fingerprint(colon) == FINGERPRINT
    assert normalize_fingerprint("sha256:" + FINGERPRINT.upper()) == FINGERPRINT
    policy = PeerPolicy.from_rules([colon])
    assert policy.fingerprints == {FINGERPRINT}
    assert policy.allows(identity())
    assert not policy.allows(identity(fingerprint="0" * 64))
    with pytest.raises(ConfigurationError):
        normalize_fingerprint("zz" * 32)


@pytest.mark.parametrize(
    ("rule", "peer", "allowed"),
    [
        pytest.param("dns:API.example.com.", identity(dns=("api.example.com",)), True, id="dns"),
        pytest.param("dns:api.example.com", identity(dns=("x.example.com",)), False, id="dns-no"),
        pytest.param("email:ops@example.com", identity(emails=("ops@example.com",)), True, id="e"),
        pytest.param("subject:CN=peer", identity(), True, id="subject"),
        pytest.param("subject:CN=peer2", identity(), False, id="subject-no"),
        pytest.param(
            "uri:spiffe://td.example/billing/*",
            identity(uris=("spiffe://td.example/billing/api",)),
            True,
            id="spiffe-prefix",
        ),
        pytest.param(
            "uri:spiffe://td.example/billing/*",
            identity(uris=("spiffe://td.example/billingx/api",)),
            False,
            id="spiffe-prefix-segment-boundary",
        ),
        pytest.param(
            "uri:spiffe://td.example/*",
            identity(uris=("spiffe://other.example/billing",)),
            False,
            id="spiffe-other-trust-domain",
        ),
        pytest.param(
            "uri:spiffe://td.example/billing",
            identity(uris=("spiffe://td.example/billing", "spiffe://td.example/admin")),
            False,
            id="spiffe-exact-but-two-uri-sans-is-not-an-svid",
        ),
        pytest.param(
            "uri:spiffe://td.example/billing/*",
            identity(uris=("spiffe://td.example/billing/api", "spiffe://td.example/billing/b")),
            False,
            id="spiffe-prefix-two-ids-under-the-prefix-is-not-an-svid",
        ),
        pytest.param(
            "uri:spiffe://td.example/billing/*",
            identity(uris=("spiffe://td.example/billing/api", "https://td.example/")),
            False,
            id="spiffe-prefix-id-beside-an-https-uri-is-not-an-svid",
        ),
        pytest.param(
            "uri:spiffe://td.example/billing/*",
            identity(uris=("https://td.example/", "spiffe://td.example/billing/api")),
            False,
            id="spiffe-prefix-id-second-of-two-is-not-an-svid",
        ),
        pytest.param(
            "uri:spiffe://td.example/*",
            identity(uris=("spiffe://td.example/billing/api",) * 2),
            False,
            id="spiffe-domain-rule-same-id-twice-is-not-an-svid",
        ),
        pytest.param(
            "uri:https://example.com/hooks",
            identity(uris=("https://example.com/hooks", "https://x.example")),
            True,
            id="plain-uri",
        ),
    ],
)
def test_identity_rules(rule: str, peer: PeerIdentity, allowed: bool) -> None:
    assert PeerPolicy.from_rules(allow=[rule]).allows(peer) is allowed


def test_unknown_rule_kind_names_the_closest() -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'uri'"):
        PeerPolicy.from_rules(allow=["urx:spiffe://td/x"])
    with pytest.raises(ConfigurationError, match="empty value"):
        PeerPolicy.from_rules(allow=["dns:"])
    with pytest.raises(ConfigurationError, match="lowercase"):
        PeerPolicy.from_rules(allow=["uri:spiffe://TD.example/*"])
    with pytest.raises(ConfigurationError, match="must end with"):
        PeerPolicy.from_rules(allow=["uri:spiffe://td.example/billing*"])


def test_empty_policy_allows_nobody_unless_allow_any() -> None:
    assert PeerPolicy().is_empty
    assert not PeerPolicy().allows(identity())
    assert PeerPolicy(allow_any=True).allows(identity())


def test_reason_names_pin_and_subject_but_no_key_material() -> None:
    reason = PeerPolicy.from_rules([SLASH_PIN]).check(identity())
    assert reason is not None
    assert OTHER_PIN in reason
    assert "CN=peer" in reason
    assert "PRIVATE" not in reason


def test_merged_is_the_union() -> None:
    merged = PeerPolicy.from_rules([SLASH_PIN]).merged(PeerPolicy.from_rules(allow=["dns:a.b"]))
    assert merged.allows(identity(pin=SLASH_PIN))
    assert merged.allows(identity(dns=("a.b",)))
    assert not merged.allows(identity())
