"""Unit tests of Standard Webhooks signing and verification (issue 4, item 1)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from werkzeug.datastructures import Headers

from mtls_hooks.core import _signing as signing_module
from mtls_hooks.core._errors import (
    ConfigurationError,
    SignatureError,
    TimestampError,
    VerificationError,
)
from mtls_hooks.core._signing import (
    Ed25519SigningKey,
    Ed25519VerifyKey,
    HeadersLike,
    HmacSecret,
    SignedHeaders,
    Signer,
    Verifier,
    parse_key,
)

# Official vector: https://github.com/standard-webhooks/standard-webhooks (libraries' tests).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

NOW = 1_700_000_000
SECRET = HmacSecret.parse(VECTOR_SECRET)
ED_KEY = Ed25519SigningKey.generate()


def fixed(now: float) -> Callable[[], float]:
    return lambda: now


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def vector_headers(**overrides: str) -> dict[str, str]:
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }
    headers.update(overrides)
    return headers


# --- official vector and key formats -----------------------------------------------------


def test_official_vector_signs() -> None:
    signed = Signer([SECRET]).sign(VECTOR_BODY, webhook_id=VECTOR_ID, timestamp=VECTOR_TIMESTAMP)
    assert signed.signature == VECTOR_SIGNATURE
    assert signed.as_dict() == vector_headers()


def test_official_vector_verifies() -> None:
    message = Verifier([SECRET], clock=fixed(VECTOR_TIMESTAMP)).verify(
        vector_headers(), VECTOR_BODY
    )
    assert (message.webhook_id, message.timestamp, message.version) == (
        VECTOR_ID,
        VECTOR_TIMESTAMP,
        "v1",
    )


def test_official_vector_secret_is_24_bytes_and_round_trips() -> None:
    assert SECRET.export() == VECTOR_SECRET
    assert HmacSecret.parse(SECRET.export()) == SECRET
    assert HmacSecret.parse(VECTOR_SECRET + "\n") == SECRET


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("whsec_" + b64(b"k" * 23), id="hmac-23-bytes"),
        pytest.param("whsec_" + b64(b"k" * 65), id="hmac-65-bytes"),
        pytest.param("whsec_" + "a!b$" * 8, id="hmac-bad-base64"),
        pytest.param("whsec_" + b64(b"k" * 32)[:-1], id="hmac-bad-padding"),
        pytest.param(b64(b"k" * 32), id="no-prefix"),
        pytest.param("whsk_" + b64(b"k" * 31), id="ed25519-secret-31-bytes"),
        pytest.param("whsk_" + b64(b"k" * 64), id="ed25519-secret-public-half-mismatch"),
        pytest.param("whpk_" + b64(b"k" * 33), id="ed25519-public-33-bytes"),
        pytest.param("", id="empty"),
    ],
)
def test_bad_keys_raise_configuration_error_without_echoing_them(text: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_key(text)
    payload = text.partition("_")[2]
    assert not payload or payload not in str(info.value)


def test_parse_key_dispatches_on_prefix() -> None:
    assert isinstance(parse_key(HmacSecret.generate().export()), HmacSecret)
    assert isinstance(parse_key(ED_KEY.export()), Ed25519SigningKey)
    assert isinstance(parse_key(ED_KEY.public_key.export()), Ed25519VerifyKey)


def test_ed25519_keys_round_trip_in_both_secret_layouts() -> None:
    exported = ED_KEY.export()
    raw = base64.b64decode(exported.removeprefix("whsk_"))
    assert len(raw) == 64  # seed || public key, the libsodium / Go layout
    assert Ed25519SigningKey.parse(exported) == ED_KEY
    seed_only = Ed25519SigningKey.parse("whsk_" + b64(raw[:32]))
    assert seed_only == ED_KEY
    assert seed_only.public_key == ED_KEY.public_key
    assert Ed25519VerifyKey.parse(ED_KEY.public_key.export()) == ED_KEY.public_key


def test_keys_compare_by_value_and_hash_consistently() -> None:
    public = ED_KEY.public_key
    assert {SECRET, HmacSecret.parse(VECTOR_SECRET)} == {SECRET}
    assert {ED_KEY, Ed25519SigningKey.parse(ED_KEY.export())} == {ED_KEY}
    assert {public, Ed25519VerifyKey.parse(public.export())} == {public}
    assert HmacSecret.generate() != SECRET
    assert Ed25519SigningKey.generate() != ED_KEY
    assert public != SECRET
    assert public != ED_KEY
    assert ED_KEY != SECRET
    assert ED_KEY.fingerprint == public.fingerprint
    assert repr(public) == f"Ed25519VerifyKey({public.export()})"


def test_reprs_never_show_secret_material() -> None:
    secret = HmacSecret.generate()
    secret_b64 = secret.export().removeprefix("whsec_")
    raw = base64.b64decode(secret_b64)
    ed_raw = base64.b64decode(ED_KEY.export().removeprefix("whsk_"))
    for text in (repr(secret), str(secret), f"{secret}", repr([secret])):
        assert secret_b64 not in text
        assert raw.hex() not in text
        assert f"HmacSecret(whsec_…, fingerprint={secret.fingerprint})" in text
    for text in (repr(ED_KEY), str(ED_KEY), repr(Signer([ED_KEY, secret]))):
        assert ED_KEY.export().removeprefix("whsk_") not in text
        assert b64(ed_raw[:32]) not in text
        assert ed_raw[:32].hex() not in text
        assert secret_b64 not in text
    assert ED_KEY.public_key.export() in repr(ED_KEY)  # the public half is fine to show


# --- v1a and rotation --------------------------------------------------------------------


def test_ed25519_v1a_sign_and_verify() -> None:
    signed = Signer([ED_KEY], clock=fixed(NOW)).sign(b"{}", webhook_id="msg_1")
    assert signed.signature.startswith("v1a,")
    assert len(base64.b64decode(signed.signature.removeprefix("v1a,"))) == 64
    message = Verifier([ED_KEY.public_key], clock=fixed(NOW)).verify(signed.as_dict(), b"{}")
    assert message.version == "v1a"
    other = Ed25519SigningKey.generate().public_key
    with pytest.raises(SignatureError) as info:
        Verifier([other], clock=fixed(NOW)).verify(signed.as_dict(), b"{}")
    assert info.value.reason == "bad-signature"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param(HmacSecret.generate(), HmacSecret.generate(), id="hmac-to-hmac"),
        pytest.param(HmacSecret.generate(), Ed25519SigningKey.generate(), id="hmac-to-ed25519"),
        pytest.param(
            Ed25519SigningKey.generate(), Ed25519SigningKey.generate(), id="ed25519-to-ed25519"
        ),
    ],
)
def test_rotation(old: HmacSecret | Ed25519SigningKey, new: HmacSecret | Ed25519SigningKey) -> None:
    def verify_key(key: HmacSecret | Ed25519SigningKey) -> HmacSecret | Ed25519VerifyKey:
        return key.public_key if isinstance(key, Ed25519SigningKey) else key

    both = Signer([new, old], clock=fixed(NOW)).sign(b"body", webhook_id="msg_rot")
    assert len(both.signature.split(" ")) == 2
    for trusted in ([old], [new], [old, new], [new, old]):
        verifier = Verifier([verify_key(k) for k in trusted], clock=fixed(NOW))
        assert verifier.verify(both.as_dict(), b"body").webhook_id == "msg_rot"
    receiver = Verifier([verify_key(old), verify_key(new)], clock=fixed(NOW))
    for key in (old, new):
        single = Signer([key], clock=fixed(NOW)).sign(b"body", webhook_id="msg_rot")
        assert receiver.verify(single.as_dict(), b"body").timestamp == NOW


def test_unknown_versions_and_junk_entries_are_skipped_when_one_verifies() -> None:
    signed = Signer([SECRET], clock=fixed(NOW)).sign(b"x", webhook_id="msg_mix")
    header = f"v2,{b64(b'z' * 32)}  v1,!!!  v1,{b64(b'y' * 32)}\t{signed.signature} v9,abc"
    headers = {**signed.as_dict(), "webhook-signature": header}
    assert Verifier([SECRET], clock=fixed(NOW)).verify(headers, b"x").version == "v1"


# --- header containers -------------------------------------------------------------------


def _containers(headers: dict[str, str]) -> list[HeadersLike]:
    title = {k.title(): v for k, v in headers.items()}
    asgi = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    return [headers, title, Headers(title), list(title.items()), asgi]


def test_header_names_are_case_insensitive_in_every_container() -> None:
    verifier = Verifier([SECRET], clock=fixed(VECTOR_TIMESTAMP))
    for container in _containers(vector_headers()):
        assert verifier.verify(container, VECTOR_BODY).webhook_id == VECTOR_ID


def test_conflicting_duplicate_headers_are_malformed() -> None:
    pairs = [*vector_headers().items(), ("Webhook-Id", "msg_other")]
    with pytest.raises(SignatureError) as info:
        Verifier([SECRET], clock=fixed(VECTOR_TIMESTAMP)).verify(pairs, VECTOR_BODY)
    assert info.value.reason == "malformed-header"


# --- tolerance ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset_s", "tolerance_s", "reason"),
    [
        pytest.param(-300, 300, None, id="past-at-tolerance"),
        pytest.param(-301, 300, "stale-timestamp", id="past-beyond"),
        pytest.param(300, 300, None, id="future-at-tolerance"),
        pytest.param(301, 300, "future-timestamp", id="future-beyond"),
        pytest.param(0, 0, None, id="zero-tolerance-now"),
        pytest.param(1, 0, "future-timestamp", id="zero-tolerance-future"),
        pytest.param(-10, 10.5, None, id="fractional-tolerance"),
        pytest.param(-11, 10.5, "stale-timestamp", id="fractional-tolerance-beyond"),
    ],
)
def test_tolerance_edges(offset_s: int, tolerance_s: float, reason: str | None) -> None:
    signed = Signer([SECRET]).sign(b"t", webhook_id="msg_t", timestamp=NOW + offset_s)
    verifier = Verifier([SECRET], tolerance_s=tolerance_s, clock=fixed(NOW))
    if reason is None:
        assert verifier.verify(signed.as_dict(), b"t").timestamp == NOW + offset_s
        return
    with pytest.raises(TimestampError) as info:
        verifier.verify(signed.as_dict(), b"t")
    assert info.value.reason == reason


def test_timestamp_details_help_without_leaking() -> None:
    signed = Signer([SECRET]).sign(b"t", webhook_id="msg_t", timestamp=NOW - 412)
    with pytest.raises(TimestampError, match=r"412 s old, beyond the tolerance of 300 s"):
        Verifier([SECRET], clock=fixed(NOW)).verify(signed.as_dict(), b"t")
    with pytest.raises(TimestampError, match=r"milliseconds"):
        Verifier([SECRET], clock=fixed(NOW)).verify(
            {**signed.as_dict(), "webhook-timestamp": str(NOW * 1000)}, b"t"
        )


def test_bad_signature_detail_never_echoes_secret_or_expected_signature() -> None:
    expected = Signer([SECRET], clock=fixed(NOW)).sign(b"a", webhook_id="msg_d")
    forged = {**expected.as_dict(), "webhook-signature": f"v1,{b64(b'f' * 32)}"}
    with pytest.raises(SignatureError) as info:
        Verifier([SECRET], clock=fixed(NOW)).verify(forged, b"a")
    text = f"{info.value} {info.value!r}"
    assert expected.signature.removeprefix("v1,") not in text
    assert VECTOR_SECRET.removeprefix("whsec_") not in text
    assert info.value.reason == "bad-signature"


def test_signer_uses_the_injected_clock_and_makes_fresh_ids() -> None:
    signed = Signer([SECRET], clock=fixed(NOW + 0.9)).sign(b"", webhook_id="msg_c")
    assert signed.timestamp == NOW
    ids = {Signer.new_webhook_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("msg_") and "." not in i for i in ids)
    explicit = Signer([SECRET], clock=fixed(0)).sign(b"", webhook_id=ids.pop(), timestamp=NOW)
    assert explicit.timestamp == NOW  # an explicit timestamp wins over the clock


# --- configuration errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: Signer([]), id="signer-no-keys"),
        pytest.param(lambda: Signer([ED_KEY.public_key]), id="signer-public-key"),  # type: ignore[list-item]
        pytest.param(lambda: Verifier([]), id="verifier-no-keys"),
        pytest.param(lambda: Verifier([ED_KEY]), id="verifier-secret-key"),  # type: ignore[list-item]
        pytest.param(lambda: Verifier(["whsec_x"]), id="verifier-string-key"),  # type: ignore[list-item]
        pytest.param(lambda: Verifier([SECRET], tolerance_s=-1), id="negative-tolerance"),
        pytest.param(lambda: Verifier([SECRET], tolerance_s=float("nan")), id="nan-tolerance"),
        pytest.param(lambda: Verifier([SECRET], tolerance_s=float("inf")), id="inf-tolerance"),
        pytest.param(lambda: HmacSecret(b"short"), id="short-raw-secret"),
        pytest.param(lambda: HmacSecret("k" * 32), id="str-raw-secret"),  # type: ignore[arg-type]
        pytest.param(lambda: HmacSecret.parse(ED_KEY.export()), id="hmac-parse-whsk"),
        pytest.param(lambda: Ed25519VerifyKey.parse(VECTOR_SECRET), id="whpk-parse-whsec"),
        pytest.param(lambda: HmacSecret.parse(None), id="hmac-parse-none"),  # type: ignore[arg-type]
        pytest.param(lambda: Verifier([SECRET], tolerance_s="300"), id="str-tolerance"),  # type: ignore[arg-type]
        pytest.param(lambda: Signer([SECRET]).sign(b"", webhook_id="a.b"), id="id-with-dot"),
        pytest.param(lambda: Signer([SECRET]).sign(b"", webhook_id=""), id="empty-id"),
        pytest.param(
            lambda: Signer([SECRET]).sign(b"", webhook_id="a", timestamp=-1), id="negative-ts"
        ),
        pytest.param(
            lambda: Signer([SECRET]).sign(b"", webhook_id="a", timestamp=True), id="bool-ts"
        ),
    ],
)
def test_configuration_errors(build: Callable[[], object]) -> None:
    with pytest.raises(ConfigurationError):
        build()


# --- junk headers: only our verification errors ------------------------------------------

_GOOD_V1A = Signer([ED_KEY]).sign(VECTOR_BODY, webhook_id=VECTOR_ID, timestamp=VECTOR_TIMESTAMP)
_SIG = "webhook-signature"
_TS = "webhook-timestamp"
_ID = "webhook-id"


def _without(name: str) -> dict[str, str]:
    return {k: v for k, v in vector_headers().items() if k != name}


def _bad(name: str, value: str, reason: str, case_id: str) -> object:
    """One junk-table row: the official vector headers with one header replaced."""
    error = TimestampError if name == _TS and reason != "missing-header" else SignatureError
    return pytest.param(vector_headers(**{name: value}), error, reason, id=case_id)


_WRONG = f"v1,{b64(b'x' * 32)}"

JUNK: list[object] = [
    pytest.param({}, SignatureError, "missing-header", id="no-headers"),
    pytest.param(_without(_ID), SignatureError, "missing-header", id="no-id"),
    pytest.param(_without(_TS), SignatureError, "missing-header", id="no-timestamp"),
    pytest.param(_without(_SIG), SignatureError, "missing-header", id="no-signature"),
    _bad(_SIG, "", "missing-header", "empty-sig"),
    _bad(_ID, "", "missing-header", "empty-id"),
    _bad(_TS, "", "missing-header", "empty-timestamp"),
    _bad(_SIG, "   ", "malformed-header", "blank-sig"),
    _bad(_SIG, "v1,ü" + VECTOR_SIGNATURE[4:], "malformed-header", "non-ascii-sig"),
    _bad(_SIG, VECTOR_SIGNATURE + " " * 70_000, "malformed-header", "huge-sig-header"),
    _bad(_SIG, "v1,!!!notbase64!!!", "malformed-header", "bad-base64"),
    _bad(_SIG, VECTOR_SIGNATURE[:-1], "malformed-header", "bad-padding"),
    _bad(_SIG, "v1," + b64(b"x" * 31), "malformed-header", "short-hmac"),
    _bad(_SIG, "v1a," + b64(b"x" * 65), "malformed-header", "long-ed25519"),
    _bad(_SIG, "v1", "malformed-header", "no-comma"),
    _bad(_SIG, "garbage", "malformed-header", "bare-word"),
    _bad(_SIG, "v1,", "malformed-header", "empty-value"),
    _bad(_SIG, VECTOR_SIGNATURE + ",extra", "malformed-header", "extra-comma"),
    _bad(_SIG, " ".join([_WRONG] * 17), "malformed-header", "too-many-signatures"),
    _bad(_SIG, "v2," + b64(b"x" * 32), "no-matching-scheme", "unknown-version-only"),
    _bad(_SIG, _GOOD_V1A.signature, "no-matching-scheme", "v1a-for-hmac-verifier"),
    _bad(_SIG, _WRONG, "bad-signature", "wrong-hmac"),
    _bad(_SIG, f"{_WRONG}    v1,{b64(b'y' * 32)}", "bad-signature", "duplicate-spaces-wrong"),
    _bad(_SIG, VECTOR_SIGNATURE.lower(), "bad-signature", "case-changed-sig"),
    _bad(_ID, "msg.1", "malformed-header", "id-with-dot"),
    _bad(_ID, "msg 1", "malformed-header", "id-with-space"),
    _bad(_ID, "msg_é", "malformed-header", "id-non-ascii"),
    _bad(_ID, "msg\x00", "malformed-header", "id-nul"),
    _bad(_ID, "msg\x7f", "malformed-header", "id-del"),
    _bad(_ID, "m" * 257, "malformed-header", "id-too-long"),
    _bad(_ID, " ", "malformed-header", "id-whitespace"),
    _bad(_TS, "-1614265330", "malformed-timestamp", "ts-negative"),
    _bad(_TS, "+1614265330", "malformed-timestamp", "ts-plus"),
    _bad(_TS, "1614265330.0", "malformed-timestamp", "ts-float"),
    _bad(_TS, "1.6e9", "malformed-timestamp", "ts-exponent"),
    _bad(_TS, "9" * 5000, "malformed-timestamp", "ts-huge"),
    _bad(_TS, "01614265330", "malformed-timestamp", "ts-leading-zero"),
    _bad(_TS, " 1614265330", "malformed-timestamp", "ts-whitespace"),
    _bad(_TS, "١٦١٤٢٦٥٣٣٠", "malformed-timestamp", "ts-arabic-digits"),
    _bad(_TS, "nan", "malformed-timestamp", "ts-nan"),
    _bad(_TS, "1614264000", "stale-timestamp", "ts-stale"),
    _bad(_TS, "1614266000", "future-timestamp", "ts-future"),
    pytest.param(
        {**vector_headers(), _SIG: b"v1,abc"}, SignatureError, "malformed-header", id="bytes-value"
    ),
    pytest.param(
        [*vector_headers().items(), (_SIG, "v1,other")],
        SignatureError,
        "malformed-header",
        id="conflicting-duplicate",
    ),
]


@pytest.mark.parametrize(("headers", "error", "reason"), JUNK)
def test_junk_headers_raise_only_our_verification_errors(
    headers: HeadersLike, error: type[VerificationError], reason: str
) -> None:
    verifier = Verifier([SECRET], clock=fixed(VECTOR_TIMESTAMP))
    with pytest.raises(VerificationError) as info:
        verifier.verify(headers, VECTOR_BODY)
    assert type(info.value) is error
    assert info.value.reason == reason


@settings(max_examples=300, deadline=None, database=None)
@given(
    webhook_id=st.text(max_size=40),
    timestamp=st.text(max_size=20),
    signature=st.one_of(
        st.text(max_size=200),
        st.lists(
            st.tuples(st.sampled_from(["v1", "v1a", "v2", ""]), st.text(max_size=100)),
            max_size=5,
        ).map(lambda entries: " ".join(f"{v},{s}" for v, s in entries)),
    ),
)
def test_arbitrary_header_text_raises_only_our_verification_errors(
    webhook_id: str, timestamp: str, signature: str
) -> None:
    verifier = Verifier([SECRET, ED_KEY.public_key], clock=fixed(VECTOR_TIMESTAMP))
    headers = {_ID: webhook_id, _TS: timestamp, _SIG: signature}
    with pytest.raises(VerificationError):
        verifier.verify(headers, VECTOR_BODY)


# --- property: verify(sign(x)) holds, any single-byte change fails ------------------------

_ID_ALPHABET = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != ".")
_ids = st.text(alphabet=_ID_ALPHABET, min_size=1, max_size=64)
_KEYS: Mapping[str, tuple[HmacSecret | Ed25519SigningKey, HmacSecret | Ed25519VerifyKey]] = {
    "v1": (SECRET, SECRET),
    "v1a": (ED_KEY, ED_KEY.public_key),
}


def _change_char(text: str, index: int, alphabet: str, shift: int) -> str:
    index %= len(text)
    new = alphabet[(alphabet.index(text[index]) + shift) % len(alphabet)]
    return text[:index] + new + text[index + 1 :]


@pytest.mark.parametrize("version", ["v1", "v1a"])
@settings(
    max_examples=150,
    deadline=None,
    database=None,
)
@given(
    body=st.binary(max_size=300),
    webhook_id=_ids,
    timestamp=st.integers(min_value=0, max_value=10**12 - 1),
    where=st.sampled_from(["body", "id", "timestamp"]),
    index=st.integers(min_value=0, max_value=10_000),
    shift=st.integers(min_value=1, max_value=8),
)
def test_sign_verify_round_trip_and_any_single_change_fails(
    version: str,
    *,
    body: bytes,
    webhook_id: str,
    timestamp: int,
    where: str,
    index: int,
    shift: int,
) -> None:
    signing_key, verify_key = _KEYS[version]
    signed = Signer([signing_key]).sign(body, webhook_id=webhook_id, timestamp=timestamp)
    # A tolerance wider than every timestamp isolates the signature from the freshness check.
    verifier = Verifier([verify_key], tolerance_s=10**13, clock=fixed(timestamp))
    message = verifier.verify(signed.as_dict(), body)
    assert (message.webhook_id, message.timestamp, message.version) == (
        webhook_id,
        timestamp,
        version,
    )

    headers = signed.as_dict()
    if where == "body":
        if not body:
            body = b"\x00"
        else:
            i = index % len(body)
            body = body[:i] + bytes([(body[i] + shift) % 256]) + body[i + 1 :]
    elif where == "id":
        headers[_ID] = _change_char(webhook_id, index, _ID_ALPHABET, shift)
    else:
        text = str(timestamp)
        digits = "0123456789" if len(text) == 1 or index % len(text) else "123456789"
        headers[_TS] = _change_char(text, index, digits, shift % (len(digits) - 1) or 1)
    assert headers != signed.as_dict() or where == "body"
    with pytest.raises(SignatureError) as info:
        verifier.verify(headers, body)
    assert info.value.reason == "bad-signature"


# --- interop with the standardwebhooks reference library ---------------------------------


def test_reference_library_signatures_pass_our_verifier() -> None:
    reference = Webhook(VECTOR_SECRET)
    now = datetime.now(tz=UTC)
    body = json.dumps({"type": "invoice.paid", "n": 1}).encode()
    signature = reference.sign("msg_interop", now, body.decode())
    headers = {
        "webhook-id": "msg_interop",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }
    assert Verifier([SECRET]).verify(headers, body).version == "v1"


def test_our_signatures_pass_the_reference_verifier() -> None:
    secret = HmacSecret.generate()
    body = json.dumps({"type": "invoice.paid", "amount": 42}).encode()
    signed: SignedHeaders = Signer([Ed25519SigningKey.generate(), secret]).sign(
        body, webhook_id=Signer.new_webhook_id()
    )
    # The header also carries a v1a entry, which the reference library skips as unknown.
    assert Webhook(secret.export()).verify(body, signed.as_dict()) == json.loads(body)


def test_reference_library_rejects_our_signature_for_another_secret() -> None:
    signed = Signer([HmacSecret.generate()]).sign(b"{}", webhook_id="msg_x")
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(HmacSecret.generate().export()).verify(b"{}", signed.as_dict())


# --- keys: junk inside otherwise valid base64 ---------------------------------------------


def _seeded_ed25519_key(needed: str) -> Ed25519SigningKey:
    """A fixed Ed25519 key whose whsk_ and whpk_ texts both contain every char of ``needed``."""
    for counter in range(10_000):
        seed = hashlib.sha256(counter.to_bytes(4, "big")).digest()
        key = Ed25519SigningKey(Ed25519PrivateKey.from_private_bytes(seed))
        texts = (key.export(), key.public_key.export())
        if all(char in text for text in texts for char in needed):
            return key
    raise AssertionError("no seed gave a key with every needed character")


_JUNK_ED_KEY = _seeded_ed25519_key("+/")
# whsec_ of 32 bytes (one '=' of padding), whsk_ of 64 bytes ('=='), whpk_ of 32 bytes ('='):
# each text holds '+' and '/', so the URL-safe alphabet changes it.
GOOD_KEY_TEXTS = {
    "whsec": "whsec_" + b64(bytes([0xFB, 0xEF, 0xFF]) * 10 + b"k!"),
    "whsk": _JUNK_ED_KEY.export(),
    "whpk": _JUNK_ED_KEY.public_key.export(),
}
_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _noncanonical(data: str) -> str:
    """Set an unused low bit of the last symbol: strict base64 decoding ignores it."""
    stripped = data.rstrip("=")
    last = _B64_ALPHABET[_B64_ALPHABET.index(stripped[-1]) ^ 1]
    return stripped[:-1] + last + data[len(stripped) :]


# Each placement turns the base64 after the prefix into junk that a lenient decoder accepts
# (non-strict binascii skips non-alphabet characters and stops at the first padding).
JUNK_PLACEMENTS: dict[str, Callable[[str], str]] = {
    "space-inside": lambda d: d[:10] + " " + d[10:],
    "newline-inside": lambda d: d[:10] + "\n" + d[10:],
    "tab-inside": lambda d: d[:10] + "\t" + d[10:],
    "nul-inside": lambda d: d[:10] + "\0" + d[10:],
    "bang-inside": lambda d: d[:10] + "!" + d[10:],
    "asterisk-inside": lambda d: d[:10] + "*" + d[10:],
    "dot-inside": lambda d: d[:10] + "." + d[10:],
    "non-ascii-inside": lambda d: d[:10] + "é" + d[11:],
    "padding-in-the-middle": lambda d: d[:8] + "=" + d[9:],
    "padding-quad-in-the-middle": lambda d: d[:8] + "====" + d[8:],
    "leading-padding": lambda d: "=" + d,
    "extra-padding": lambda d: d + "=",
    "data-after-padding": lambda d: d + "AAAA",
    "url-safe-alphabet": lambda d: d.translate(str.maketrans("+/", "-_")),
    "missing-padding": lambda d: d.rstrip("="),
    "one-char-short": lambda d: d[:10] + d[11:],
    "one-char-long": lambda d: d[:10] + "A" + d[10:],
    "padding-after-whole-quads": lambda d: d[: len(d.rstrip("=")) // 4 * 4] + "=",
    "non-canonical-trailing-bits": _noncanonical,
}


@pytest.mark.parametrize("kind", list(GOOD_KEY_TEXTS))
@pytest.mark.parametrize("placement", list(JUNK_PLACEMENTS))
def test_junk_inside_valid_base64_is_refused(kind: str, placement: str) -> None:
    good = GOOD_KEY_TEXTS[kind]
    prefix, _, data = good.partition("_")
    parsed = parse_key(good)  # the twin: the clean text is a key
    assert parsed.export() == good
    junk = f"{prefix}_{JUNK_PLACEMENTS[placement](data)}"
    assert junk != good
    with pytest.raises(ConfigurationError) as info:
        parse_key(junk)
    assert data[:16] not in str(info.value)
    assert "_" + data[:8] not in repr(info.value)


@pytest.mark.parametrize("kind", list(GOOD_KEY_TEXTS))
def test_surrounding_whitespace_of_a_key_file_is_tolerated(kind: str) -> None:
    good = GOOD_KEY_TEXTS[kind]
    assert parse_key(f"  {good}\n").export() == good


# --- v1 compares in constant time ---------------------------------------------------------


class DigestSpy:
    """Stands in for the ``hmac`` module of one of ours: records every ``compare_digest``.

    ``verdict`` forces the answer; ``None`` delegates to the real function.
    """

    def __init__(self, verdict: bool | None) -> None:
        self.verdict = verdict
        self.calls: list[tuple[bytes, bytes]] = []

    def compare_digest(self, a: bytes, b: bytes) -> bool:
        self.calls.append((a, b))
        return hmac.compare_digest(a, b) if self.verdict is None else self.verdict


def _spy_on(monkeypatch: pytest.MonkeyPatch, verdict: bool | None) -> DigestSpy:
    spy = DigestSpy(verdict)
    monkeypatch.setattr(signing_module, "hmac", spy)
    return spy


def test_v1_verdict_is_the_constant_time_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    """A `==` (or any other comparison) in place of compare_digest fails here."""
    verifier = Verifier([SECRET], clock=fixed(VECTOR_TIMESTAMP))
    authentic = vector_headers()
    forged = vector_headers(**{_SIG: _WRONG})
    expected = base64.b64decode(VECTOR_SIGNATURE.removeprefix("v1,"))

    spy = _spy_on(monkeypatch, verdict=False)
    with pytest.raises(SignatureError) as info:
        verifier.verify(authentic, VECTOR_BODY)
    assert info.value.reason == "bad-signature"
    assert spy.calls == [(expected, expected)]

    spy = _spy_on(monkeypatch, verdict=True)
    assert verifier.verify(forged, VECTOR_BODY).version == "v1"
    assert spy.calls == [(expected, b"x" * 32)]


def test_v1_compares_every_candidate_with_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: timing does not tell which key or which entry matched."""
    other = HmacSecret.generate()
    verifier = Verifier([SECRET, other], clock=fixed(VECTOR_TIMESTAMP))
    headers = vector_headers(**{_SIG: f"{VECTOR_SIGNATURE} {_WRONG}"})
    spy = _spy_on(monkeypatch, verdict=None)
    assert verifier.verify(headers, VECTOR_BODY).webhook_id == VECTOR_ID
    assert len(spy.calls) == 4
    assert {candidate for _, candidate in spy.calls} == {
        base64.b64decode(VECTOR_SIGNATURE[3:]),
        b"x" * 32,
    }
