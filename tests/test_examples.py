"""Every example in examples/ runs for real: certificates from certs_tool, mTLS on 127.0.0.1.

The receiver examples are served the way the README says (``mtls-hooks serve``, the service
TOML) or in-process with :func:`mtls_hooks.testing.running_server`; the senders run through
their ``main(argv)`` or, for the minimal one, as a script in its own directory.
"""

from __future__ import annotations

import ast
import configparser
import contextlib
import importlib
import os
import queue
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from certs_tool import CA, IssuedCert, backup_key
from certs_tool._cli import main as certs_tool_main
from mtls_hooks.core._identity import PeerIdentity
from mtls_hooks.core._keys_signing import HmacSecret
from mtls_hooks.serving._config import ServerConfig
from mtls_hooks.testing import running_server, running_server_process
from tests.nginx import nginx_available

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SECRET = HmacSecret.generate().export()
BILLING_ID = "spiffe://example.org/billing"
OPS_ID = "spiffe://example.org/ops"
HANDLED = re.compile(r"handled (\S+) (msg_\S+) from (.+)")


@dataclass(frozen=True)
class Pki:
    """``certs-tool quickstart certs`` plus a billing and an ops identity from the same CA."""

    root: Path  # holds certs/, as a newcomer's working directory would
    client: IssuedCert
    billing: IssuedCert
    ops: IssuedCert

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    def pem(self, name: str) -> str:
        return str(self.certs / f"{name}.pem")

    def sender_args(self, url: str, who: str = "client") -> list[str]:
        return [url, "--cert", self.pem(who), "--key", self.pem(f"{who}-key")]

    def server_config(self, *pinned: IssuedCert) -> ServerConfig:
        return ServerConfig(
            certfile=self.pem("server"),
            keyfile=self.pem("server-key"),
            client_ca=(self.pem("ca"),),
            pins=tuple(identity.spki_pin for identity in pinned),
        )

    def client_context(self, who: str) -> httpx.Client:
        context = ssl.create_default_context(cafile=self.pem("ca"))
        context.load_cert_chain(self.pem(who), self.pem(f"{who}-key"))
        return httpx.Client(verify=context, timeout=10)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("newcomer")
    assert certs_tool_main(["quickstart", str(root / "certs")]) == 0
    ca = CA.load_dir(root / "certs")
    issued = {
        "billing": ca.issue_client("billing", uris=[BILLING_ID]),
        "ops": ca.issue_client("ops", uris=[OPS_ID]),
    }
    for name, cert in issued.items():
        cert.cert_pem.write_to_path(root / "certs" / f"{name}.pem")
        cert.private_key_pem().write_to_path(root / "certs" / f"{name}-key.pem")
    client = IssuedCert.from_files(root / "certs" / "client.pem", root / "certs" / "client-key.pem")
    return Pki(root, client, issued["billing"], issued["ops"])


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    monkeypatch.delenv("MTLS_HOOKS_DEDUPE_PATH", raising=False)


def _identity(cert: IssuedCert) -> PeerIdentity:
    return PeerIdentity.from_certificate(cert.certificate)


def fresh_import(name: str) -> ModuleType:
    """Import an example anew, so it reads the environment of this test."""
    sys.modules.pop(name, None)
    return importlib.import_module(name)


class Lines:
    """Reads a child's output in a thread, so that every wait on it is bounded."""

    def __init__(self, stream: Iterable[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream: Iterable[str]) -> None:
        for line in stream:
            self.lines.put(line)

    def wait_for(self, pattern: str | re.Pattern[str], timeout_s: float = 20.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while (left_s := deadline - time.monotonic()) > 0:
            with contextlib.suppress(queue.Empty):
                if match := re.search(pattern, self.lines.get(timeout=left_s)):
                    return match
        pytest.fail(f"no line matched {pattern!r} in {timeout_s} s")


@pytest.fixture
def served_by_cli(pki: Pki, secret_env: None) -> Iterator[tuple[str, Lines]]:
    """``mtls-hooks serve examples.receiver_app:app`` as the README runs it; stopped by PID."""
    cli = Path(sys.executable).with_name("mtls-hooks")
    pins = [arg for who in (pki.client, pki.billing, pki.ops) for arg in ("--pin", who.spki_pin)]
    tls = ["--cert", pki.pem("server"), "--key", pki.pem("server-key")]
    tls += ["--client-ca", pki.pem("ca")]
    proc = subprocess.Popen(
        [str(cli), "serve", "examples.receiver_app:app", *tls, *pins, "--bind", "127.0.0.1:0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error", "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    lines = Lines(proc.stdout)
    try:
        port = lines.wait_for(r"Running on https://127\.0\.0\.1:(\d+)").group(1)
        yield f"https://localhost:{port}", lines
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        proc.stdout.close()
        lines.thread.join(5)
    assert proc.returncode == 0


def test_receiver_app_served_by_cli_handles_what_send_sync_sends(
    served_by_cli: tuple[str, Lines], pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    from examples import send_sync

    base, lines = served_by_cli
    server_pin = IssuedCert.from_files(pki.pem("server"), pki.pem("server-key")).spki_pin
    argv = [*pki.sender_args(f"{base}/webhooks"), "--ca", pki.pem("ca"), "--pin", server_pin]
    assert send_sync.main(argv) == 0
    sent = re.findall(r"^(\S+)\s+(msg_\S+) #1 204 ", capsys.readouterr().out, re.MULTILINE)
    assert [event_type for event_type, _ in sent] == [t for t, _ in send_sync.EVENTS]
    for event_type, webhook_id in sent:
        match = lines.wait_for(HANDLED)
        assert match.groups() == (event_type, webhook_id, str(_identity(pki.client)))


def test_receiver_app_routes_narrow_identities(
    served_by_cli: tuple[str, Lines], pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    from examples import send_sync

    base, lines = served_by_cli
    billing_url = f"{base}/webhooks/billing"
    ca = ["--ca", pki.pem("ca"), "--max-attempts", "1"]
    # Pinned, so admitted by the handshake, but not the billing identity: 403, not retried.
    assert send_sync.main([*pki.sender_args(billing_url), *ca]) == 1
    out = capsys.readouterr().out
    assert out.count("failed: receiver answered 403") == len(send_sync.EVENTS)
    assert send_sync.main([*pki.sender_args(billing_url, "billing"), *ca]) == 0
    assert lines.wait_for(HANDLED).group(3).startswith(BILLING_ID)

    with pki.client_context("client") as client:
        assert client.get(f"{base}/admin/whoami").status_code == 403
    with pki.client_context("ops") as ops:
        assert ops.get(f"{base}/admin/whoami").json()["peer"].startswith(OPS_ID)


def test_minimal_receiver_and_minimal_sender(
    pki: Pki, secret_env: None, capfd: pytest.CaptureFixture[str]
) -> None:
    receiver = fresh_import("examples.minimal_receiver")
    with running_server(receiver.app, pki.server_config(pki.client)) as server:
        # The README runs it from the directory where `certs-tool quickstart certs` wrote.
        done = subprocess.run(
            [sys.executable, str(EXAMPLES / "minimal_sender.py")],
            cwd=pki.root,
            env={**os.environ, "WEBHOOK_URL": f"https://localhost:{server.port}/webhooks"},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert re.search(r"DeliveryResult\(.*status_code=204.*\bok\)", done.stdout)
    handled = f"invoice paid: {{'invoice': 'in_1', 'amount': 4200}} from {_identity(pki.client)}"
    assert handled in capfd.readouterr().out


@pytest.mark.parametrize(("name", "most"), [("minimal_receiver", 15), ("minimal_sender", 10)])
def test_minimal_examples_fit_their_readme_promise(name: str, most: int) -> None:
    source = (EXAMPLES / f"{name}.py").read_text()
    docstring = ast.get_docstring(ast.parse(source), clean=False) or ""
    code = source.split(docstring, 1)[-1].splitlines()[1:]  # after the docstring's quotes
    lines = [line for line in code if line.strip() and not line.lstrip().startswith("#")]
    assert len(lines) <= most


def test_async_fanout_delivers_everything(
    pki: Pki, secret_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from examples import send_async_fanout

    receiver = fresh_import("examples.receiver_app")
    with running_server(receiver.app, pki.server_config(pki.client)) as server:
        argv = [*pki.sender_args(server.url("/webhooks")), "--ca", pki.pem("ca")]
        assert send_async_fanout.main([*argv, "--count", "120", "--concurrency", "8"]) == 0
    out = capsys.readouterr().out
    summary = r"^120 delivered, 0 failed in [\d.]+ s: \d+ deliveries/s with 8 in flight$"
    assert re.search(summary, out, re.MULTILINE)
    assert len(set(HANDLED.findall(out))) == 120


def test_key_rotation_walkthrough_has_zero_failures(capsys: pytest.CaptureFixture[str]) -> None:
    from examples import key_rotation

    assert key_rotation.main() == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(".")[0] for line in out[:5]] == ["1", "2", "3", "4", "5"]
    assert all(line.endswith(" 0 failed") for line in out[:4])
    assert out[4].endswith(" refused")
    assert re.fullmatch(r"done: \d+ deliveries, 0 failed", out[5])


@pytest.mark.nginx
def test_nginx_example(capsys: pytest.CaptureFixture[str]) -> None:
    if not nginx_available():
        if os.environ.get("CI"):
            pytest.fail("nginx is missing in CI: .ci/install-peers should have installed it")
        pytest.skip("nginx is not installed")
    from examples.nginx import run

    assert run.main() == 0
    out = capsys.readouterr().out
    pid = int(re.search(r"^nginx (\d+) listening", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped (and reaped) before main() returned
    log = re.findall(r'^  (SUCCESS|FAILED).* dn="([^"]*)" .* (\d{3}) webhook-id=msg_', out, re.M)
    # nginx verified billing's certificate, and answered the other CA's client 400.
    assert log == [("SUCCESS", "CN=billing", "204")] * 3 + [("FAILED", "CN=stranger", "400")]


SERVICE = EXAMPLES / "service"
# Valid-looking pins nobody's key has, replaced by real ones before the file is used.
PLACEHOLDER_PINS = ("sha256/" + "A" * 43 + "=", "sha256/" + "B" * 42 + "A=")


UNIT = SERVICE / "mtls-hooks-receiver.service"


def test_service_unit_runs_the_cli_hardened() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)  # repeated keys
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    service = parser["Service"]
    exec_start = " ".join(service["ExecStart"].replace("\\\n", " ").split())
    assert exec_start.endswith(
        "mtls-hooks serve examples.receiver_app:app --config /etc/mtls-hooks/receiver.toml"
    )
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["LoadCredential"].startswith("server-key.pem:")
    hardening = {"NoNewPrivileges": "yes", "PrivateTmp": "yes", "ProtectSystem": "strict"}
    assert {name: service[name] for name in hardening} == hardening
    assert service["User"] == "mtls-hooks"


def _unit_environment(credentials: Path, state: Path) -> dict[str, str]:
    """The unit's ``Environment=`` lines, with the systemd specifiers they use resolved."""
    environment: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        if line.startswith("Environment="):
            name, _, value = line.removeprefix("Environment=").partition("=")
            environment[name] = value.replace("%d", str(credentials)).replace("%S", str(state))
    return environment


def test_service_toml_and_unit_serve_the_receiver_app(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from examples import send_sync

    # /etc/mtls-hooks as the unit expects it, the key where LoadCredential puts it.
    etc, credentials, state = tmp_path / "etc", tmp_path / "credentials", tmp_path / "state"
    for directory in (etc / "tls", credentials, state / "mtls-hooks"):
        directory.mkdir(parents=True)
    shutil.copy(pki.pem("server"), etc / "tls" / "server.pem")
    shutil.copy(pki.pem("ca"), etc / "tls" / "clients-ca.pem")
    shutil.copy(pki.pem("server-key"), credentials / "server-key.pem")
    text = (SERVICE / "receiver.toml").read_text()
    assert all(placeholder in text for placeholder in PLACEHOLDER_PINS)
    backup_pin = backup_key(tmp_path / "backup-key.pem")
    for placeholder, pin in zip(PLACEHOLDER_PINS, (pki.billing.spki_pin, backup_pin), strict=True):
        text = text.replace(placeholder, pin)
    (etc / "receiver.toml").write_text(text)

    environment = _unit_environment(credentials, state)
    config = ServerConfig.load(config_file=etc / "receiver.toml", environ=environment)
    assert config.keyfile == str(credentials / "server-key.pem")
    assert config.certfile == str(etc / "tls" / "server.pem")
    assert config.pins == (pki.billing.spki_pin, backup_pin)
    assert config.workers == 2

    assert environment["MTLS_HOOKS_DEDUPE_PATH"] == str(state / "mtls-hooks" / "dedupe.sqlite3")
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    for name, value in environment.items():
        # As under systemd, the workers see the unit's environment: the receiver reads
        # MTLS_HOOKS_DEDUPE_PATH (the SQLite store both workers share) and ignores the rest.
        monkeypatch.setenv(name, value)
    with running_server_process("examples.receiver_app:app", config) as server:
        url = f"https://localhost:{server.port}/webhooks/billing"
        assert len(server.worker_pids) == 2
        assert send_sync.main([*pki.sender_args(url, "billing"), "--ca", pki.pem("ca")]) == 0
        unpinned = [*pki.sender_args(url), "--ca", pki.pem("ca"), "--max-attempts", "1"]
        assert send_sync.main(unpinned) == 1  # refused in the handshake
    assert (state / "mtls-hooks" / "dedupe.sqlite3").exists()
    out = capsys.readouterr().out
    assert out.count(" #1 204 ") == 3


def test_proxy_example_admits_only_what_it_verifies_again(
    pki: Pki, tmp_path: Path, secret_env: None
) -> None:
    from urllib.parse import quote

    from mtls_hooks.core._signing import Signer

    (tmp_path / "tls").mkdir()
    shutil.copy(pki.pem("ca"), tmp_path / "tls" / "clients-ca.pem")
    text = (EXAMPLES / "proxy" / "receiver-behind-nginx.toml").read_text()
    (tmp_path / "receiver.toml").write_text(text.replace(PLACEHOLDER_PINS[0], pki.billing.spki_pin))
    config = ServerConfig.load(config_file=tmp_path / "receiver.toml", environ={})
    assert (config.client_cert_header, config.trusted_proxies) == ("nginx", ("127.0.0.1/32",))
    body = b'{"type": "invoice.paid", "data": {"invoice": "in_1"}}'
    signer = Signer([HmacSecret.parse(SECRET)])
    with running_server_process("examples.receiver_app:app", config) as server:
        # As nginx-site.conf forwards it: the pinned sender in, a CA-valid unpinned one out.
        for who, status in ((pki.billing, 204), (pki.ops, 403)):
            headers = signer.sign(body, webhook_id=f"msg_proxy_{status}").as_dict()
            headers["content-type"] = "application/json"
            headers["x-ssl-client-cert"] = quote(who.cert_pem.bytes().decode(), safe="")
            url = f"http://127.0.0.1:{server.port}/webhooks/billing"
            assert httpx.post(url, content=body, headers=headers).status_code == status


def test_pg_effects_example_books_each_invoice_once(
    pki: Pki, secret_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uuid
    from urllib.parse import urlsplit

    import psycopg

    from mtls_hooks.core._signing import Signer
    from tests.peers import PG_URL, need_tcp

    need_tcp("PostgreSQL", urlsplit(PG_URL).hostname or "", urlsplit(PG_URL).port or 5432)
    namespace = f"ex_{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("DATABASE_URL", PG_URL)
    monkeypatch.setenv("HOOKS_NAMESPACE", namespace)
    receiver = fresh_import("examples.receiver_pg_effects")
    signer = Signer([HmacSecret.parse(SECRET)])
    try:
        with (
            running_server(receiver.app, pki.server_config(pki.client)) as server,
            pki.client_context("client") as client,
        ):

            def deliver(webhook_id: str, amount: int) -> int:
                body = f'{{"type": "invoice.paid", "data": {{"amount": {amount}}}}}'.encode()
                headers = {**signer.sign(body, webhook_id=webhook_id).as_dict()}
                headers["content-type"] = "application/json"
                answer = client.post(server.url("/webhooks"), content=body, headers=headers)
                return answer.status_code

            assert deliver("msg_negative", -5) == 500  # row and done mark rolled back
            assert [deliver("msg_paid", 42) for _ in range(2)] == [204, 204]  # then a duplicate
        with psycopg.connect(PG_URL) as conn:
            ledger = conn.execute(f'SELECT * FROM "{namespace}_ledger"').fetchall()  # noqa: S608
            done = conn.execute(f'SELECT webhook_id FROM "{namespace}_dedupe"').fetchall()  # noqa: S608
        assert ledger == [("msg_paid", 42)]
        assert done == [("msg_paid",)]
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            for table in ("ledger", "dedupe", "rate"):
                conn.execute(f'DROP TABLE IF EXISTS "{namespace}_{table}"')


def test_outbox_example_delivers_each_invoice_once(
    pki: Pki, secret_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from examples import outbox_send

    receiver = fresh_import("examples.receiver_app")
    store = f"sqlite:///{tmp_path / 'outbox.sqlite3'}"
    with running_server(receiver.app, pki.server_config(pki.client)) as server:
        argv = [server.url("/webhooks"), "--cert", pki.pem("client")]
        argv += ["--key", pki.pem("client-key"), "--ca", pki.pem("ca"), "--store", store]
        assert outbox_send.main(argv) == 0
        assert outbox_send.main(argv) == 0  # the same idempotency keys: nothing new to send
    out = capsys.readouterr().out
    delivered = re.findall(r"^(msg_\S+) done after 1 attempt\(s\)$", out, re.MULTILINE)
    assert len(delivered) == 6
    assert len(set(delivered)) == 3
    assert re.findall(r"^\d+ delivered, 0 failed$", out, re.MULTILINE) == [
        "3 delivered, 0 failed",
        "0 delivered, 0 failed",
    ]
    assert sorted(m[1] for m in HANDLED.findall(out)) == sorted(set(delivered))


def test_inbox_example_answers_202_then_handles_each_event_once(
    pki: Pki,
    secret_env: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from mtls_hooks.core._signing import Signer
    from tests.outbox.processes import wait_until

    monkeypatch.setenv("MTLS_HOOKS_INBOX_URL", f"sqlite:///{tmp_path / 'inbox.sqlite3'}")
    receiver = fresh_import("examples.receiver_inbox")
    inbox = receiver.hooks.inbox(receiver.app)
    signer = Signer([HmacSecret.parse(SECRET)])
    body = b'{"type": "invoice.paid", "data": {"amount": 42}}'
    with running_server(receiver.app, pki.server_config(pki.client)) as server:
        with pki.client_context("client") as client:

            def deliver(webhook_id: str) -> tuple[int, str | None]:
                headers = {**signer.sign(body, webhook_id=webhook_id).as_dict()}
                headers["content-type"] = "application/json"
                answer = client.post(server.url("/webhooks"), content=body, headers=headers)
                return answer.status_code, answer.headers.get("Webhook-Duplicate")

            answers = [deliver(webhook_id) for webhook_id in ("msg_a", "msg_b", "msg_a")]
        assert answers == [(202, None), (202, None), (202, "true")]
        # The unpinned billing identity is refused in the handshake: nothing is stored.
        with pki.client_context("billing") as stranger, pytest.raises(httpx.TransportError):
            stranger.post(server.url("/webhooks"), content=body)
        # The server's own inbox worker runs the handler.
        wait_until(lambda: inbox.status().by_state["done"] == 2, "both handled", timeout_s=20)
        assert inbox.status().by_state == {"pending": 0, "running": 0, "done": 2, "failed": 0}
    handled = re.findall(r"^handled invoice\.paid (msg_\w+) from (.+)$", capsys.readouterr().out,
                         re.MULTILINE)  # fmt: skip
    assert sorted(handled) == [("msg_a", "CN=client"), ("msg_b", "CN=client")]
