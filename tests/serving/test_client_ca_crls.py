"""With CRLs configured, every CA of the client CA bundle needs its CRL.

``load_client_ca`` used to excuse a CA that signs another CA of the bundle, assuming it
issues no client certificate. A root that signs an intermediate *and* issues client
certificates directly then started fine and refused every one of its clients at runtime
(OpenSSL's "unable to get certificate CRL"). The rule is now simple: every CA, one CRL.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from certs_tool import CA
from mtls_hooks import ConfigurationError
from mtls_hooks.testing import running_server
from tests.serving.apps import app
from tests.serving.conftest import Identity, Pki


@pytest.fixture
def two_level(fresh_pki: Pki) -> tuple[Pki, CA, Path, Path]:
    """A root that issues clients itself and signs an intermediate that does too."""
    intermediate = fresh_pki.ca.create_intermediate(name="issuing CA")
    bundle = fresh_pki.directory / "client-cas.pem"
    bundle.write_bytes(fresh_pki.ca.cert_pem.bytes() + intermediate.cert_pem.bytes())
    intermediate_crl = fresh_pki.directory / "issuing.crl.pem"
    intermediate.crl_pem().write_to_path(intermediate_crl)
    return fresh_pki, intermediate, bundle, intermediate_crl


def test_root_without_crl_is_a_startup_error(two_level: tuple[Pki, CA, Path, Path]) -> None:
    pki, _, bundle, intermediate_crl = two_level
    direct = pki.identity("direct")
    config = pki.config(direct, client_ca=(str(bundle),), crl=(str(intermediate_crl),))
    with pytest.raises(ConfigurationError, match=r"'CN=[^']*' has no CRL.*every CA"):
        config.check_files()


def test_root_and_intermediate_clients_are_served_with_both_crls(
    two_level: tuple[Pki, CA, Path, Path],
) -> None:
    pki, intermediate, bundle, intermediate_crl = two_level
    direct = pki.identity("direct")
    via_intermediate = pki.identity("via-intermediate", intermediate.issue_client("via"))
    config = pki.config(
        direct,
        via_intermediate,
        client_ca=(str(bundle),),
        crl=(pki.crl_file, str(intermediate_crl)),
    )
    with running_server(app, config) as server:
        for identity in (direct, via_intermediate):
            assert _status(server.url("/whoami"), pki, identity) == 200, identity.name


def _status(url: str, pki: Pki, identity: Identity) -> int:
    with httpx.Client(verify=pki.context(identity), timeout=10.0) as client:
        return client.get(url).status_code
