"""A CRL that is expired, or that no client CA signed, is refused at start-up and at reload.

OpenSSL rejects *every* client once an expired CRL is loaded ("CRL has expired"), and a CRL
that no client CA signed is either ignored or fatal depending on the issuer: both are
configuration errors, caught before a socket is bound, and a reload that brings one keeps
the material in use. The forged case matters most: a CRL whose issuer *name* is the client
CA's but whose signature is another key's.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from certs_tool import CA
from mtls_hooks import ConfigurationError
from mtls_hooks.serving._config import ServerConfig
from mtls_hooks.serving._serving import serve_async
from mtls_hooks.testing import running_server
from tests.serving.apps import app
from tests.serving.conftest import Identity, LogCollector, Pki

BadCrl = Callable[[Pki], bytes]


def _expired(pki: Pki) -> bytes:
    # Signed by the right CA ten days ago, valid for seven: nobody republished it.
    signed = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    return pki.ca.crl_pem(last_update=signed, next_update=dt.timedelta(days=7)).bytes()


def _other_issuer(pki: Pki) -> bytes:
    return CA(name="some other CA").crl_pem().bytes()


def _forged(pki: Pki) -> bytes:
    # Same issuer name as the client CA, another key: only the signature tells them apart.
    name = pki.ca.certificate.subject.rfc4514_string().removeprefix("CN=")
    impostor = CA(name=name)
    assert impostor.certificate.subject == pki.ca.certificate.subject
    return impostor.crl_pem().bytes()


BAD_CRLS = [
    pytest.param(_expired, r"CRL .* expired at \d{4}-\d\d-\d\d \d\d:\d\d UTC", id="expired"),
    pytest.param(_other_issuer, r"CRL .* is not signed by any client CA", id="other-issuer"),
    pytest.param(_forged, r"CRL .* is not signed by any client CA", id="forged-issuer-name"),
]


def _status(server_url: str, pki: Pki, identity: Identity) -> int:
    with httpx.Client(verify=pki.context(identity), timeout=10.0) as client:
        return client.get(server_url).status_code


@pytest.mark.parametrize(("make_crl", "message"), BAD_CRLS)
def test_bad_crl_is_a_startup_error(fresh_pki: Pki, make_crl: BadCrl, message: str) -> None:
    Path(fresh_pki.crl_file).write_bytes(make_crl(fresh_pki))
    config = fresh_pki.config(fresh_pki.identity("alpha"), crl=(fresh_pki.crl_file,))
    with pytest.raises(ConfigurationError, match=message):
        config.check_files()
    with pytest.raises(ConfigurationError, match=message), running_server(app, config):
        pytest.fail("the server started with a bad CRL")


def test_serve_refuses_a_bad_crl_before_serving(fresh_pki: Pki) -> None:
    Path(fresh_pki.crl_file).write_bytes(_expired(fresh_pki))
    config = fresh_pki.config(fresh_pki.identity("alpha"), crl=(fresh_pki.crl_file,))
    # The bound only stops a regression from hanging the suite: serve_async must raise at
    # once, before it serves anything.
    with (
        socket.create_server(("127.0.0.1", 0)) as sock,
        pytest.raises(ConfigurationError, match="expired"),
    ):
        asyncio.run(asyncio.wait_for(serve_async(app, config, sockets=[sock]), 15.0))


def test_crl_close_to_its_next_update_is_accepted(fresh_pki: Pki) -> None:
    """The twin of ``expired``: valid for one more minute is valid."""
    signed = dt.datetime.now(dt.UTC) - dt.timedelta(days=7)
    crl = fresh_pki.ca.crl_pem(last_update=signed, next_update=dt.timedelta(days=7, minutes=6))
    crl.write_to_path(fresh_pki.crl_file, force=True)
    alpha = fresh_pki.identity("alpha")
    config = fresh_pki.config(alpha, crl=(fresh_pki.crl_file,))
    with running_server(app, config) as server:
        assert _status(server.url("/whoami"), fresh_pki, alpha) == 200


@pytest.mark.parametrize(("make_crl", "message"), BAD_CRLS)
def test_bad_crl_at_reload_keeps_the_old_material(
    fresh_pki: Pki, make_crl: BadCrl, message: str
) -> None:
    alpha, revoked = fresh_pki.identity("alpha"), fresh_pki.identity("revoked")
    fresh_pki.ca.revoke(revoked.issued)
    fresh_pki.write_crl()
    config = fresh_pki.config(alpha, revoked, crl=(fresh_pki.crl_file,))
    with LogCollector("mtls_hooks.reload") as log, running_server(app, config) as server:
        before = server.material.current
        Path(fresh_pki.crl_file).write_bytes(make_crl(fresh_pki))
        assert server.reload() is False
        assert server.material.current is before
        [line] = [line for line in log.lines if "event=reload_failed" in line]
        assert "kept=old-material" in line
        assert re.search(message, line), line  # the same reason as at start-up
        # The old CRL still decides: alpha is served, the revoked client still refused.
        assert _status(server.url("/whoami"), fresh_pki, alpha) == 200
        with pytest.raises(httpx.TransportError):
            _status(server.url("/whoami"), fresh_pki, revoked)

        fresh_pki.write_crl()  # a fresh, valid CRL: the twin, taken
        assert server.reload() is True
        assert server.material.current.generation == before.generation + 1
        assert _status(server.url("/whoami"), fresh_pki, alpha) == 200


def _toml(pki: Pki, *pinned: Identity, crl: bool) -> ServerConfig:
    path = pki.directory / "receiver.toml"
    pins = ", ".join(f"'{i.spki_pin}'" for i in pinned)
    path.write_text(
        "[server]\ncertfile = 'server.pem'\nkeyfile = 'server.key'\nclient_ca = ['ca.pem']\n"
        + ("crl = ['crl.pem']\n" if crl else "")
        + f"pins = [{pins}]\ngraceful_timeout_s = 2\n",
        encoding="utf-8",
    )
    return ServerConfig.from_toml(path)


def test_crl_added_at_reload_is_refused_not_silently_unchecked(fresh_pki: Pki) -> None:
    """Each connection keeps the CRL-check flag of the listening context (OpenSSL's
    SSL_set_SSL_CTX moves the CA store, not the verify flags): a CRL added at reload was
    loaded and never consulted, so a revoked client kept being admitted. The reload now
    fails and says a restart is needed."""
    alpha, revoked = fresh_pki.identity("alpha"), fresh_pki.identity("revoked")
    config = _toml(fresh_pki, alpha, revoked, crl=False)
    with LogCollector("mtls_hooks.reload") as log, running_server(app, config) as server:
        before = server.material.current
        fresh_pki.ca.revoke(revoked.issued)
        fresh_pki.write_crl()
        _toml(fresh_pki, alpha, revoked, crl=True)
        assert server.reload() is False
        assert server.material.current is before
        [line] = [line for line in log.lines if "event=reload_failed" in line]
        assert "restart" in line
        assert _status(server.url("/whoami"), fresh_pki, alpha) == 200


def test_crl_removed_at_reload_is_refused_not_an_outage(fresh_pki: Pki) -> None:
    """The other way round, every client failed ("unable to get certificate CRL")."""
    alpha = fresh_pki.identity("alpha")
    config = _toml(fresh_pki, alpha, crl=True)
    with LogCollector("mtls_hooks.reload") as log, running_server(app, config) as server:
        _toml(fresh_pki, alpha, crl=False)
        assert server.reload() is False
        [line] = [line for line in log.lines if "event=reload_failed" in line]
        assert "restart" in line
        assert _status(server.url("/whoami"), fresh_pki, alpha) == 200


def test_crl_replaced_at_reload_is_checked(fresh_pki: Pki) -> None:
    """The twin: with ``crl`` on before and after, a new CRL takes effect at once."""
    alpha, revoked = fresh_pki.identity("alpha"), fresh_pki.identity("revoked")
    config = _toml(fresh_pki, alpha, revoked, crl=True)
    with running_server(app, config) as server:
        assert _status(server.url("/whoami"), fresh_pki, revoked) == 200
        fresh_pki.ca.revoke(revoked.issued)
        fresh_pki.write_crl()
        assert server.reload() is True
        assert _status(server.url("/whoami"), fresh_pki, alpha) == 200
        with pytest.raises(httpx.TransportError):
            _status(server.url("/whoami"), fresh_pki, revoked)


@pytest.mark.parametrize(("make_crl", "message"), BAD_CRLS)
def test_cli_serve_refuses_a_bad_crl_in_one_line(
    fresh_pki: Pki, make_crl: BadCrl, message: str
) -> None:
    Path(fresh_pki.crl_file).write_bytes(make_crl(fresh_pki))
    alpha = fresh_pki.identity("alpha")
    # A child process: were the check gone, it would serve instead of exiting, and the
    # timeout turns that into a failure rather than a hung suite.
    # fmt: off
    done = subprocess.run(
        [
            sys.executable, "-m", "mtls_hooks.cli._main", "serve", "tests.serving.apps:app",
            "--cert", fresh_pki.server_cert, "--key", fresh_pki.server_key,
            "--client-ca", fresh_pki.ca_file, "--crl", fresh_pki.crl_file,
            "--pin", alpha.spki_pin, "--bind", "127.0.0.1:0",
        ],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=60,
        check=False,
    )
    # fmt: on
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("mtls-hooks: error: ")
    assert re.search(message, line), line
