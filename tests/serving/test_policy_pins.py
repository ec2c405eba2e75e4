"""``PeerPolicy`` compares the pins it holds, however it was built.

The byte form that :meth:`PeerPolicy.check` compares used to be filled only by
``from_rules`` and ``merged``: a directly built policy refused its own pin, and
``dataclasses.replace(policy, spki_pins=frozenset())`` kept admitting the removed pin
(fail-open). It is now derived in ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import ssl

import pytest

from certs_tool import CA
from mtls_hooks import ConfigurationError, PeerIdentity, PeerPolicy


@pytest.fixture(scope="module")
def peers(certs_ca: CA) -> tuple[PeerIdentity, PeerIdentity]:
    def identity(name: str) -> PeerIdentity:
        pem = certs_ca.issue_client(name).cert_pem.bytes().decode("ascii")
        return PeerIdentity.from_der(ssl.PEM_cert_to_DER_cert(pem))

    return identity("alpha"), identity("beta")


def test_direct_construction_admits_its_pin(peers: tuple[PeerIdentity, PeerIdentity]) -> None:
    alpha, beta = peers
    policy = PeerPolicy(spki_pins=frozenset({alpha.spki_pin}))
    assert policy.allows(alpha)
    assert not policy.allows(beta)  # failing twin: a pin that is not configured


def test_direct_construction_normalises_pins(peers: tuple[PeerIdentity, PeerIdentity]) -> None:
    alpha, _ = peers
    curl_form = "sha256//" + alpha.spki_pin.removeprefix("sha256/")
    policy = PeerPolicy(
        spki_pins=frozenset({curl_form}), fingerprints=frozenset({alpha.fingerprint.upper()})
    )
    assert policy.spki_pins == {alpha.spki_pin}
    assert policy.fingerprints == {alpha.fingerprint}
    assert policy.allows(alpha)
    assert policy == PeerPolicy.from_rules([alpha.spki_pin, alpha.fingerprint])


@pytest.mark.parametrize("pin", ["sha256/short", "not a pin"])
def test_direct_construction_rejects_malformed_pins(pin: str) -> None:
    with pytest.raises(ConfigurationError):
        PeerPolicy(spki_pins=frozenset({pin}))


def test_replace_removing_a_pin_refuses_it(peers: tuple[PeerIdentity, PeerIdentity]) -> None:
    alpha, _ = peers
    policy = PeerPolicy.from_rules([alpha.spki_pin])
    assert policy.allows(alpha)
    emptied = dataclasses.replace(policy, spki_pins=frozenset())
    assert emptied.is_empty
    assert not emptied.allows(alpha), "a pin removed with dataclasses.replace still admits"


def test_replace_swapping_pins(peers: tuple[PeerIdentity, PeerIdentity]) -> None:
    alpha, beta = peers
    policy = dataclasses.replace(
        PeerPolicy.from_rules([alpha.spki_pin]), spki_pins=frozenset({beta.spki_pin})
    )
    assert policy.allows(beta)
    assert not policy.allows(alpha)


def test_merged_compares_both_sides(peers: tuple[PeerIdentity, PeerIdentity]) -> None:
    alpha, beta = peers
    merged = PeerPolicy(spki_pins=frozenset({alpha.spki_pin})).merged(
        PeerPolicy(spki_pins=frozenset({beta.spki_pin}))
    )
    assert merged.allows(alpha)
    assert merged.allows(beta)
