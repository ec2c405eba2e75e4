"""Caches of identities and verdicts never confuse two certificates with the same subject.

The receiver caches each endpoint's verdict per certificate, and the handshake parses each
leaf once. Two CA-valid certificates with the *same subject* but different keys, only one
of them pinned: after the pinned one has been admitted (and cached), the other is still
refused, in the handshake and on a pinned endpoint. A cache keyed by subject, CN or serial
instead of the whole certificate would let the second one in.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from quart import Quart
from tenacity import stop_after_attempt

from mtls_hooks import PeerIdentity, WebhookEvent, WebhookReceiver, WebhookSender
from mtls_hooks.core._errors import DeliveryError, StatusError
from mtls_hooks.sender._retry import RetryPolicy
from mtls_hooks.testing import running_server
from tests.serving.apps import app as whoami_app
from tests.serving.conftest import Identity, LogCollector, Pki

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass(frozen=True)
class Twins:
    pki: Pki
    pinned: Identity
    lookalike: Identity  # same subject, its own key, same CA, not pinned


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> Twins:
    pki = Pki.create(tmp_path_factory.mktemp("twins"))
    pinned = pki.identity("twin-a", pki.ca.issue_client("twin"))
    lookalike = pki.identity("twin-b", pki.ca.issue_client("twin"))
    a, b = pinned.issued.certificate, lookalike.issued.certificate
    assert a.subject == b.subject
    assert pinned.spki_pin != lookalike.spki_pin
    return Twins(pki, pinned, lookalike)


def _sender(twins: Twins, identity: Identity) -> WebhookSender:
    return WebhookSender(
        signing_keys=SECRET,
        certfile=identity.cert,
        keyfile=identity.key,
        ca_file=twins.pki.ca_file,
        # One try: a refused handshake must fail the test, never sleep toward a retry.
        retry=RetryPolicy(stop=stop_after_attempt(1)),
    )


# --------------------------------------------------------------------------- handshake


def test_handshake_refuses_the_lookalike_after_the_pinned_twin(twins: Twins) -> None:
    with (
        running_server(whoami_app, twins.pki.config(twins.pinned)) as server,
        LogCollector("mtls_hooks.tls", wake_on="event=handshake_refused") as log,
    ):
        with _sender(twins, twins.pinned) as sender:
            for _ in range(2):  # the second one hits every per-certificate cache
                assert sender.send(server.url("/whoami"), {}).ok
        with _sender(twins, twins.lookalike) as sender, pytest.raises(DeliveryError) as caught:
            sender.send(server.url("/whoami"), {})
        assert log.matched.wait(10.0), f"no handshake refusal logged ({caught.value!r})"
        with _sender(twins, twins.pinned) as sender:
            assert sender.send(server.url("/whoami"), {}).ok
    [line] = [line for line in log.lines if "event=handshake_refused" in line]
    assert " reason=unpinned " in line
    assert f" spki={twins.lookalike.spki_pin} " in line


# --------------------------------------------------------------------------- endpoint


@pytest.fixture(scope="module")
def endpoint(twins: Twins) -> Iterator[tuple[str, list[str]]]:
    """Any CA-verified client in the handshake; the webhook endpoint pins the first twin."""
    app = Quart(__name__)
    handled: list[str] = []
    hooks = WebhookReceiver(app, path="/hooks", keys=[SECRET], pins=[twins.pinned.spki_pin])

    @hooks.on("twin.test")
    async def handle(event: WebhookEvent) -> None:
        assert event.peer is not None
        handled.append(event.peer.spki_pin)

    with running_server(app, twins.pki.config(allow_any_client=True)) as server:
        yield server.url("/hooks"), handled


def test_endpoint_refuses_the_lookalike_after_caching_the_pinned_twin(
    twins: Twins, endpoint: tuple[str, list[str]]
) -> None:
    url, handled = endpoint
    with _sender(twins, twins.pinned) as sender:
        for n in range(2):
            assert sender.send(url, {"n": n}, event_type="twin.test").ok
    with _sender(twins, twins.lookalike) as sender, pytest.raises(StatusError) as caught:
        sender.send(url, {"n": 2}, event_type="twin.test")
    assert caught.value.status_code == 403
    with _sender(twins, twins.pinned) as sender:
        assert sender.send(url, {"n": 3}, event_type="twin.test").ok
    assert handled == [twins.pinned.spki_pin] * 3


def test_endpoint_verdicts_are_per_certificate(twins: Twins) -> None:
    """The same, on the compiled endpoint: its verdict cache is keyed by the certificate."""
    app = Quart(__name__)
    hooks = WebhookReceiver(app, path="/hooks", keys=[SECRET], pins=[twins.pinned.spki_pin])
    settings = hooks.settings(app, "default")
    pinned = PeerIdentity.from_certificate(twins.pinned.issued.certificate)
    lookalike = PeerIdentity.from_certificate(twins.lookalike.issued.certificate)
    assert pinned.subject == lookalike.subject
    for _ in range(2):
        assert settings.identity_refusal(pinned) is None
        refusal = settings.identity_refusal(lookalike)
        assert refusal is not None
        assert refusal[0] == "identity-not-allowed"
        assert twins.lookalike.spki_pin in refusal[1]
