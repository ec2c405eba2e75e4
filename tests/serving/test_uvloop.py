"""``loop = "uvloop"``: the same guarantees on uvloop's event loop, proved by real handshakes.

uvloop runs TLS in its own ``SSLProtocol`` (Cython). It builds each connection's SSL object
with ``SSLContext.wrap_bio`` and calls ``do_handshake``, ``read`` and ``write`` on it, so our
pinning ``sslobject_class`` runs there too; were it ignored, an unpinned client would be
served, and ``test_unpinned_client_is_refused_in_the_handshake`` would fail. Each test
checks that the loop really is uvloop's, so a fallback to asyncio cannot pass for it.

What a refused client reads differs: uvloop drops what OpenSSL queued (an alert) and closes
the socket, so every refused client sees an unexpected EOF, and the refusal line has no peer
address (``_refusals.py`` finds both only in asyncio's frames). The README says so.

uvloop is in the dev extra: these tests fail, rather than skip, where it is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from quart import Quart, request

from mtls_hooks.cli._main import main
from mtls_hooks.core._errors import ConfigurationError
from mtls_hooks.receiver._authz import current_peer
from mtls_hooks.serving._config import ServerConfig
from mtls_hooks.testing import (
    ProcessHandle,
    ServerHandle,
    running_server,
    running_server_process,
)
from tests.serving.conftest import Cast, Identity, LogCollector, Pki

app = Quart(__name__)
UVLOOP_APP = f"{__name__}:app"
TLS12 = pytest.param(ssl.TLSVersion.TLSv1_2, id="tls1.2")
TLS13 = pytest.param(ssl.TLSVersion.TLSv1_3, id="tls1.3")


@app.post("/loop")
async def loop_and_peer() -> dict[str, Any]:
    """Which loop runs this request, who the peer is, and the scope's ``tls`` keys."""
    body = await request.get_data()
    return {
        "loop": type(asyncio.get_running_loop()).__module__.partition(".")[0],
        "subject": current_peer().subject,
        "tls_keys": sorted(request.scope["extensions"]["tls"]),
        "tls_version": request.scope["extensions"]["tls"]["tls_version"],
        "pid": os.getpid(),
        "body_bytes": len(body),
    }


def _stdlib_context(pki: Pki, identity: Identity, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.ca_file)
    context.minimum_version = context.maximum_version = version
    context.load_cert_chain(identity.cert, identity.key)
    return context


def _ask(url: str, pki: Pki, identity: Identity) -> dict[str, Any]:
    with httpx.Client(verify=pki.context(identity), timeout=10.0) as client:
        response = client.post(url, content=b"u" * 1024)
    assert response.status_code == 200
    answer: dict[str, Any] = response.json()
    return answer


def _request_unpinned(
    server: ServerHandle | ProcessHandle, pki: Pki, who: Identity, version: ssl.TLSVersion
) -> str:
    """Handshake, send a request, read; return what came back (never an HTTP answer)."""
    context = _stdlib_context(pki, who, version)
    received = b""
    with socket.create_connection((server.host, server.port), timeout=10) as raw:
        try:
            with context.wrap_socket(
                raw, server_hostname="localhost", suppress_ragged_eofs=False
            ) as tls:
                # Under TLS 1.3 the client's side of the handshake ends before the server
                # has checked its certificate: the request is written, and must not be read.
                tls.sendall(b"POST /loop HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\n\r\n")
                while chunk := tls.recv(65536):
                    received += chunk
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as exc:
            return f"{type(exc).__name__}: {received!r}"
    return f"clean close: {received!r}"


@pytest.fixture(scope="module")
def uv_server(pki: Pki, cast: Cast) -> Iterator[ServerHandle]:
    with running_server(app, pki.config(cast.alpha, loop="uvloop")) as handle:
        yield handle


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "http2"])
def test_pinned_client_is_served_on_uvloop_with_the_tls_extension(
    uv_server: ServerHandle, pki: Pki, cast: Cast, http2: bool
) -> None:
    with httpx.Client(verify=pki.context(cast.alpha, http2=http2), http2=http2) as client:
        response = client.post(uv_server.url("/loop"), content=b"u" * 1024)
    assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    answer = response.json()
    assert answer["loop"] == "uvloop", "the server ran on asyncio's loop, not uvloop's"
    assert answer["subject"] == "CN=alpha"
    assert answer["body_bytes"] == 1024
    assert answer["tls_keys"] == sorted(
        {
            "server_cert",
            "client_cert_chain",
            "client_cert_name",
            "client_cert_error",
            "tls_version",
            "cipher_suite",
        }
    )


@pytest.mark.parametrize("version", [TLS12, TLS13])
def test_unpinned_client_is_refused_in_the_handshake(
    uv_server: ServerHandle, pki: Pki, cast: Cast, version: ssl.TLSVersion
) -> None:
    wanted = f'reason=unpinned subject="CN=stranger" spki={cast.stranger.spki_pin} '
    with LogCollector("mtls_hooks.tls", wake_on=wanted) as log:
        seen = _request_unpinned(uv_server, pki, cast.stranger, version)
        assert log.matched.wait(10.0), log.lines
    assert "HTTP/" not in seen, f"an unpinned client was answered on uvloop: {seen}"
    [line] = [line for line in log.lines if wanted in line]
    assert " peer=unknown " in line  # README: no peer address on uvloop
    # What a refused client reads on uvloop (README, "Event loop"): no alert, an EOF.
    assert seen == "SSLEOFError: b''"


def test_the_pinned_twin_over_the_same_raw_client_is_answered(
    uv_server: ServerHandle, pki: Pki, cast: Cast
) -> None:
    context = _stdlib_context(pki, cast.alpha, ssl.TLSVersion.TLSv1_3)
    with (
        socket.create_connection((uv_server.host, uv_server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"POST /loop HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\n\r\n")
        assert tls.recv(12) == b"HTTP/1.1 200"


@pytest.mark.parametrize("version", [TLS12, TLS13])
@pytest.mark.parametrize("who", ["outsider", None], ids=["wrong-ca", "no-certificate"])
def test_chain_refusals_read_an_eof_on_uvloop(
    uv_server: ServerHandle, pki: Pki, cast: Cast, who: str | None, version: ssl.TLSVersion
) -> None:
    # OpenSSL's own refusals: on asyncio the client reads OpenSSL's alert (unknown_ca,
    # certificate_required); uvloop closes without writing it (README, "Event loop").
    context = ssl.create_default_context(cafile=pki.ca_file)
    context.minimum_version = context.maximum_version = version
    if who is not None:
        identity: Identity = getattr(cast, who)
        context.load_cert_chain(identity.cert, identity.key)
    reason = "cert-verify-failed" if who else "no-certificate"
    with LogCollector("mtls_hooks.tls", wake_on=f"reason={reason}") as log:
        with (
            socket.create_connection((uv_server.host, uv_server.port), timeout=10) as raw,
            pytest.raises(ssl.SSLEOFError),
            context.wrap_socket(
                raw, server_hostname="localhost", suppress_ragged_eofs=False
            ) as tls,
        ):
            tls.recv(1)
        assert log.matched.wait(10.0), log.lines


def _write_config(path: Path, *pinned: Identity) -> None:
    pins = ", ".join(f"'{i.spki_pin}'" for i in pinned)
    path.write_text(
        "[server]\ncertfile = 'server.pem'\nkeyfile = 'server.key'\nclient_ca = ['ca.pem']\n"
        f"pins = [{pins}]\nloop = 'uvloop'\ngraceful_timeout_s = 2\n",
        encoding="utf-8",
    )


def _served_certificate(server: ServerHandle, pki: Pki, identity: Identity) -> bytes:
    context = _stdlib_context(pki, identity, ssl.TLSVersion.TLSv1_3)
    with (
        socket.create_connection((server.host, server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"POST /loop HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\n\r\n")
        assert tls.recv(12) == b"HTTP/1.1 200"
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_reload_swaps_pins_and_server_certificate_on_uvloop(fresh_pki: Pki) -> None:
    alpha, beta = fresh_pki.identity("alpha"), fresh_pki.identity("beta")
    path = fresh_pki.directory / "receiver.toml"
    _write_config(path, alpha)
    with running_server(app, ServerConfig.from_toml(path)) as server:
        assert _ask(server.url("/loop"), fresh_pki, alpha)["loop"] == "uvloop"
        before = _served_certificate(server, fresh_pki, alpha)
        assert "HTTP/" not in _request_unpinned(server, fresh_pki, beta, ssl.TLSVersion.TLSv1_3)

        fresh_pki.write_server(fresh_pki.ca.issue_server("localhost", "127.0.0.1"))
        _write_config(path, beta)  # beta in, alpha out
        assert server.reload()

        assert _ask(server.url("/loop"), fresh_pki, beta)["subject"] == "CN=beta"
        after = _served_certificate(server, fresh_pki, beta)
        assert after != before
        assert after == ssl.PEM_cert_to_DER_cert(fresh_pki.server.cert_pem.bytes().decode())
        assert "HTTP/" not in _request_unpinned(server, fresh_pki, alpha, ssl.TLSVersion.TLSv1_3)


@pytest.mark.slow
def test_every_worker_process_runs_uvloop(pki: Pki, cast: Cast) -> None:
    config = pki.config(cast.alpha, loop="uvloop")
    with running_server_process(UVLOOP_APP, config, workers=2) as server:
        seen: dict[int, str] = {}
        for _ in range(40):  # new connections until both workers have answered
            answer = _ask(server.url("/loop"), pki, cast.alpha)
            seen[answer["pid"]] = answer["loop"]
            if len(seen) == 2:
                break
        assert set(seen) == set(server.worker_pids)
        assert set(seen.values()) == {"uvloop"}
        refused = _request_unpinned(server, pki, cast.stranger, ssl.TLSVersion.TLSv1_2)
        assert "HTTP/" not in refused


@pytest.mark.slow
def test_one_process_serve_runs_uvloop(pki: Pki, cast: Cast) -> None:
    with running_server_process(UVLOOP_APP, pki.config(cast.alpha, loop="uvloop")) as server:
        assert _ask(server.url("/loop"), pki, cast.alpha)["loop"] == "uvloop"


def test_asyncio_stays_the_default(pki: Pki, cast: Cast) -> None:
    config = pki.config(cast.alpha)
    assert config.loop == "asyncio"
    with running_server(app, config) as server:
        assert _ask(server.url("/loop"), pki, cast.alpha)["loop"] == "asyncio"


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("uvlop", "did you mean 'uvloop'", id="typo"),
        pytest.param("trio", "loop must be one of asyncio, uvloop, got 'trio'", id="unknown"),
    ],
)
def test_unknown_loops_are_refused_naming_the_valid_ones(
    pki: Pki, cast: Cast, value: str, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        pki.config(cast.alpha, loop=value)


def test_missing_uvloop_is_one_error_naming_the_extra(
    pki: Pki, cast: Cast, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # "import uvloop" now raises ImportError
    with pytest.raises(ConfigurationError, match=r"pip install 'mtls-hooks\[uvloop\]'"):
        pki.config(cast.alpha, loop="uvloop")
    assert pki.config(cast.alpha).loop == "asyncio"  # the twin: asyncio needs nothing


def test_loop_from_the_environment(pki: Pki, cast: Cast) -> None:
    config = ServerConfig.load(
        environ={"MTLS_HOOKS_LOOP": "uvloop"},
        overrides={
            "certfile": pki.server_cert,
            "keyfile": pki.server_key,
            "client_ca": [pki.ca_file],
            "pins": [cast.alpha.spki_pin],
        },
    )
    assert config.loop == "uvloop"


def test_cli_loop_flag_reaches_the_config(
    pki: Pki, cast: Cast, capsys: pytest.CaptureFixture[str]
) -> None:
    tls = ["--cert", pki.server_cert, "--key", pki.server_key, "--client-ca", pki.ca_file]
    status = main(["serve", UVLOOP_APP, *tls, "--pin", cast.alpha.spki_pin, "--loop", "uvlop"])
    assert status == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "did you mean 'uvloop'" in lines[0]


def test_a_stalled_client_does_not_hold_shutdown_on_uvloop(pki: Pki, cast: Cast) -> None:
    # uvloop's transport sockets refuse shutdown(); the straggler abort must still reach the
    # connection, or shutdown waits for the TLS close exchange (30 s on asyncio's default).
    config = pki.config(cast.alpha, loop="uvloop", graceful_timeout_s=1.0)
    context = pki.context(cast.alpha)
    # The server must be gone within graceful_timeout_s + its margin, while the stalled
    # client still holds its connection; running_server raises TimeoutError otherwise.
    with (
        contextlib.ExitStack() as client_side,
        running_server(app, config, stop_timeout_s=8.0) as server,
    ):
        raw = socket.create_connection((server.host, server.port), 10)
        stalled = client_side.enter_context(context.wrap_socket(raw, server_hostname="localhost"))
        # Headers promise 100 bytes of body; 10 arrive; the handler waits for the rest.
        stalled.sendall(
            b"POST /loop HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n" + b"x" * 10
        )
        assert _ask(server.url("/loop"), pki, cast.alpha)["loop"] == "uvloop"
