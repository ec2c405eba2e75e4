"""A receiver's RFC 9457 refusal reads as its reason and detail, not as a raw JSON snippet;
a malformed or oversized problem body falls back to the snippet and never raises."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from mtls_hooks.core._errors import ConfigurationError, StatusError
from mtls_hooks.core._problem import PROBLEM_CONTENT_TYPE, problem_body
from mtls_hooks.sender._outcomes import classify_status
from tests.sender.conftest import KINDS, SECRET, FakeTime, SenderPki, deliver, exact_policy
from tests.sender.scripted import ScriptedServer, Status

Serve = Callable[..., ScriptedServer]
PIN = "sha256/" + "A" * 43 + "="
DETAIL = f"client 'CN=intruder' ({PIN}) is not allowed on this endpoint"


def _problem(status: int, **members: object) -> Status:
    return Status(status, {"Content-Type": PROBLEM_CONTENT_TYPE}, json.dumps(members).encode())


@pytest.mark.parametrize("kind", KINDS)
def test_refusal_quotes_reason_and_detail(
    kind: str, pki: SenderPki, fake_time: FakeTime, serve: Serve
) -> None:
    body = problem_body(403, detail=DETAIL, reason="identity-not-allowed")  # as ours answers
    server = serve([Status(403, {"Content-Type": PROBLEM_CONTENT_TYPE}, body)])
    kwargs = {"signing_keys": SECRET, **pki.client(), **fake_time.kwargs(),
              "retry": exact_policy()}  # fmt: skip
    with pytest.raises(StatusError) as caught:
        deliver(kind, kwargs, server.url(), b"{}")
    assert str(caught.value) == (f"receiver answered 403 Forbidden: identity-not-allowed: {DETAIL}")
    assert caught.value.status_code == 403
    assert caught.value.result is not None
    assert caught.value.result.attempts[0].detail == f"identity-not-allowed: {DETAIL}"


def _message(status: int, headers: dict[str, str], body: bytes) -> str:
    failure = classify_status(status, headers, body, url="https://h/x", now=0.0)
    assert failure is not None
    return str(failure)


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        pytest.param(
            "application/problem+json; charset=utf-8",
            b'{"title": "Bad Request", "status": 400, "detail": "no data field"}',
            "receiver answered 400 Bad Request: no data field",
            id="no-reason-with-parameters",
        ),
        pytest.param(
            PROBLEM_CONTENT_TYPE, b'{"detail": "gone fishing"}',
            "receiver answered 400: gone fishing", id="no-title",
        ),
        pytest.param(
            PROBLEM_CONTENT_TYPE,
            b'{"title": "Bad\\nRequest", "reason": "x\\u001b[31m", "detail": "a\\r\\nb\\u0007"}',
            "receiver answered 400 Bad Request: x [31m: a b", id="control-characters",
        ),
        pytest.param(
            PROBLEM_CONTENT_TYPE, b'{"detail": "' + b"d" * 1000 + b'"}',
            "receiver answered 400: " + "d" * 400, id="long-detail-cut",
        ),
    ],
)  # fmt: skip
def test_problem_bodies(content_type: str, body: bytes, expected: str) -> None:
    assert _message(400, {"content-type": content_type}, body) == expected


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b"\xff\xfe{", id="not-utf8"),
        pytest.param(b"[1, 2]", id="not-an-object"),
        pytest.param(b'{"detail": 42}', id="detail-not-a-string"),
        pytest.param(b'{"title": "t"}', id="no-detail"),
        # Under the size cap, but deeper than the parser's recursion limit.
        pytest.param(b"[" * 8000 + b"]" * 8000, id="deeply-nested"),
        pytest.param(b'{"detail": "' + b"x" * 20_000 + b'"}', id="oversized"),
        pytest.param(b'{"detail": 1' + b"0" * 5000 + b"}", id="huge-number"),
    ],
)
def test_junk_problem_bodies_fall_back_to_the_snippet(body: bytes) -> None:
    message = _message(422, {"content-type": PROBLEM_CONTENT_TYPE}, body)
    assert message.startswith("receiver answered 422")
    assert len(message) <= len("receiver answered 422: ") + 200


def test_other_json_keeps_the_snippet() -> None:
    # Only a problem document is read: plain JSON errors are quoted as they are.
    body = b'{"detail": "not a problem document"}'
    message = _message(400, {"content-type": "application/json"}, body)
    assert message == 'receiver answered 400: {"detail": "not a problem document"}'


@pytest.mark.parametrize(
    ("url", "match"),
    [
        pytest.param("https://localhost:/x", "has an empty port", id="empty-port"),
        pytest.param("https://[::1]:/x", "has an empty port", id="empty-port-v6"),
        pytest.param("https://localhost:https/x", "is malformed", id="port-not-a-number"),
        pytest.param("https://localhost:65536/x", "is malformed", id="port-out-of-range"),
        pytest.param("https://localhost:0/x", "port 0", id="port-zero"),
        pytest.param("ftp://localhost/x", "must be https", id="ftp"),
        pytest.param("localhost:8443/x", "must be https", id="no-scheme"),
    ],
)
@pytest.mark.parametrize("kind", KINDS)
def test_unfit_urls_are_refused_before_any_connection(
    kind: str, url: str, match: str, pki: SenderPki
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        deliver(kind, {"signing_keys": SECRET, **pki.client()}, url, b"{}")
