"""Against real nginx with ``ssl_verify_client on``: a peer nobody here wrote."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tenacity import stop_after_attempt

from mtls_hooks.core._errors import RetriesExhaustedError, StatusError, TLSError
from tests.nginx import NginxServer, Response, nginx_available, run_nginx
from tests.sender.conftest import KINDS, SECRET, FakeTime, SenderPki, deliver, exact_policy

pytestmark = pytest.mark.nginx


@pytest.fixture(scope="module")
def nginx(pki: SenderPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxServer]:
    if not nginx_available():
        if os.environ.get("CI"):
            pytest.fail("nginx is missing in CI: .ci/install-peers should have installed it")
        pytest.skip("nginx is not installed (run .ci/install-peers)")
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


@pytest.mark.parametrize("form", ["pem", "encrypted", "pkcs12"])
@pytest.mark.parametrize("kind", KINDS)
def test_delivers_to_nginx(kind: str, form: str, pki: SenderPki, nginx: NginxServer) -> None:
    result = deliver(kind, {"signing_keys": SECRET, **pki.client(form)}, nginx.url + "/hook",
                     {"form": form})  # fmt: skip
    assert result.ok
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


@pytest.mark.parametrize("kind", KINDS)
def test_pin_mismatch_never_reaches_nginx(
    kind: str, pki: SenderPki, nginx: NginxServer, tmp_path: Path
) -> None:
    time.sleep(0.05)  # let nginx log what earlier tests sent
    before = len(nginx.access_entries())
    wrong = pki.ca.issue_client(common_name="other key").spki_pin
    with pytest.raises(TLSError, match="not in pins"):
        deliver(kind, {"signing_keys": SECRET, **pki.client(), "pins": [wrong]}, nginx.url, b"{}")
    time.sleep(0.1)
    assert len(nginx.access_entries()) == before  # not one HTTP request was logged


@pytest.mark.parametrize("kind", KINDS)
def test_expired_client_certificate_refused_by_nginx(
    kind: str, pki: SenderPki, nginx: NginxServer
) -> None:
    expired = {"certfile": pki.path("expired.pem"), "keyfile": pki.path("expired.key")}
    # nginx finishes the handshake and answers 400 "The SSL certificate error" (its 495 page).
    with pytest.raises(StatusError, match=r"400.*SSL certificate error") as caught:
        deliver(kind, {"signing_keys": SECRET, **pki.client(), **expired}, nginx.url, b"{}")
    assert caught.value.attempts == 1
