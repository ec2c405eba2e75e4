"""Against real nginx with ``ssl_verify_client on``: a peer nobody here wrote."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from tenacity import stop_after_attempt

from mtls_hooks.core._errors import RetriesExhaustedError, StatusError, TLSError
from tests.nginx import NginxServer, Response, nginx_available, run_nginx
from tests.peers import missing
from tests.sender.conftest import (
    KINDS,
    SECRET,
    FakeTime,
    SenderPki,
    deliver,
    exact_kwargs,
    exact_policy,
)

pytestmark = pytest.mark.nginx


@pytest.fixture(scope="module")
def nginx(pki: SenderPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxServer]:
    if not nginx_available():
        missing("nginx")  # skips outside CI only
    with run_nginx(
        tmp_path_factory.mktemp("nginx"),
        cert=pki.path("server.pem"),
        key=pki.path("server.key"),
        client_ca=pki.ca_file,
        locations={"/busy": Response(503, "busy", {"Retry-After": "3"})},
    ) as server:
        yield server


def _entries_for(nginx: NginxServer, webhook_id: str, count: int = 1) -> list[dict[str, str]]:
    # nginx logs a request after its answer is sent: the client can get there first.
    deadline = time.monotonic() + 5
    while True:
        entries = [e for e in nginx.access_entries() if e["webhook_id"] == webhook_id]
        if len(entries) >= count or time.monotonic() > deadline:
            return entries
        time.sleep(0.01)


def _kwargs(pki: SenderPki, fake_time: FakeTime, **tls: Any) -> dict[str, Any]:
    # A fake sleep, never the default day-long policy with a real one: a change that made
    # a refusal here retryable fails the test in a few fake seconds instead of hanging it.
    return {**exact_kwargs(pki, fake_time), **tls}


@pytest.mark.parametrize("form", ["pem", "encrypted", "pkcs12"])
@pytest.mark.parametrize("kind", KINDS)
def test_delivers_to_nginx(
    kind: str, form: str, pki: SenderPki, nginx: NginxServer, fake_time: FakeTime
) -> None:
    kwargs = _kwargs(pki, fake_time, **pki.client(form))
    result = deliver(kind, kwargs, nginx.url + "/hook", {"form": form})
    assert result.ok
    assert fake_time.sleeps == []
    (entry,) = _entries_for(nginx, result.webhook_id)
    assert entry["status"] == "200"
    assert entry["ssl_client_verify"] == "SUCCESS"
    assert entry["ssl_client_s_dn"] == "CN=sender"
    assert entry["webhook_signature"].startswith("v1,")


@pytest.mark.parametrize("kind", KINDS)
def test_retry_after_from_nginx(
    kind: str, pki: SenderPki, nginx: NginxServer, fake_time: FakeTime
) -> None:
    kwargs = {"signing_keys": SECRET, **pki.client(), **fake_time.kwargs(),
              "retry": exact_policy(stop=stop_after_attempt(3))}  # fmt: skip
    with pytest.raises(RetriesExhaustedError, match="attempt limit") as caught:
        deliver(kind, kwargs, nginx.url + "/busy", b"{}")
    assert fake_time.sleeps == [3.0, 3.0]
    result = caught.value.result
    assert result is not None
    entries = _entries_for(nginx, result.webhook_id, 3)
    assert [e["status"] for e in entries] == ["503"] * 3
    # Same id, fresh timestamps (the fake clock moved 3 s per wait), one kept-alive connection.
    assert [int(e["webhook_timestamp"]) for e in entries] == [
        int(fake_time.now) - 6,
        int(fake_time.now) - 3,
        int(fake_time.now),
    ]
    assert len({e["connection"] for e in entries}) == 1


def _logged_through_marker(
    kind: str, pki: SenderPki, nginx: NginxServer, fake_time: FakeTime
) -> list[dict[str, str]]:
    """Deliver a marker and wait for its log line; return the log up to and with it.

    nginx's one worker logs each request as it finishes, in order: once a sequential client's
    marker is logged, every request it sent before is too. No sleep needed.
    """
    marker = deliver(kind, _kwargs(pki, fake_time), nginx.url + "/hook", b"{}")
    _entries_for(nginx, marker.webhook_id)
    entries = nginx.access_entries()
    ids = [e["webhook_id"] for e in entries]
    assert marker.webhook_id in ids
    return entries[: ids.index(marker.webhook_id) + 1]


@pytest.mark.parametrize("kind", KINDS)
def test_pin_mismatch_never_reaches_nginx(
    kind: str, pki: SenderPki, nginx: NginxServer, fake_time: FakeTime
) -> None:
    before = _logged_through_marker(kind, pki, nginx, fake_time)
    wrong = pki.ca.issue_client(common_name="other key").spki_pin
    with pytest.raises(TLSError, match="not in pins") as caught:
        deliver(kind, _kwargs(pki, fake_time, pins=[wrong]), nginx.url, b"{}")
    assert caught.value.attempts == 1
    after = _logged_through_marker(kind, pki, nginx, fake_time)
    # Between the two markers, not one HTTP request was logged.
    assert after[: len(before)] == before
    assert len(after) == len(before) + 1
    assert fake_time.sleeps == []


@pytest.mark.parametrize("kind", KINDS)
def test_expired_client_certificate_refused_by_nginx(
    kind: str, pki: SenderPki, nginx: NginxServer, fake_time: FakeTime
) -> None:
    expired = {"certfile": pki.path("expired.pem"), "keyfile": pki.path("expired.key")}
    # nginx finishes the handshake and answers 400 "The SSL certificate error" (its 495 page).
    with pytest.raises(StatusError, match=r"400.*SSL certificate error") as caught:
        deliver(kind, _kwargs(pki, fake_time, **expired), nginx.url, b"{}")
    assert caught.value.attempts == 1
    assert fake_time.sleeps == []
