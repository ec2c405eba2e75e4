"""`make demo`: the whole product, end to end, on 127.0.0.1, in a few seconds.

1. ``certs-tool quickstart`` writes a CA, a server and a client certificate to a scratch
   directory, and ``certs-tool client`` issues a second, *unpinned* client from the same CA.
2. ``mtls-hooks serve examples.receiver_app:app`` starts the example receiver, pinned to the
   first client's SPKI pin.
3. ``examples/send_sync.py`` delivers three signed events; the receiver's handlers print each
   one with the caller's verified identity.
4. Four refusals: the unpinned client and a client without a certificate are refused in the TLS
   handshake, a tampered body is answered 401, and a replayed webhook-id is acknowledged
   without running the handler again.

Every step prints one line; the receiver is stopped by PID; the exit status is 0 only if
every expectation held.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tenacity import stop_after_attempt

from mtls_hooks import (
    DeliveryError,
    HmacSecret,
    RetryPolicy,
    Signer,
    WebhookSender,
    create_client_context,
)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


class Narrative:
    """Prints one line per step and remembers whether every expectation held."""

    def __init__(self) -> None:
        self.failures = 0
        self.steps = 0

    def step(self, text: str, ok: bool = True) -> bool:
        self.steps += 1
        self.failures += not ok
        print(f"{self.steps:>2}. {'ok  ' if ok else 'FAIL'} {text}", flush=True)
        return ok


def run(*argv: str, env: dict[str, str] | None = None) -> str:
    """Run one of our console scripts; return its stdout, raise on failure."""
    done = subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"demo: {' '.join(argv[:2])} failed: {done.stderr.strip()}")
    return done.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Setup:
    """What every step needs: the narrative, the running receiver and the credentials."""

    story: Narrative
    receiver: Receiver
    url: str
    certs: Path
    secret: str
    pin: str
    env: dict[str, str]

    def sender(self, client: str | None = "client", **options: Any) -> WebhookSender:
        """A sender presenting ``client``'s certificate (none when ``client`` is None)."""
        return WebhookSender(
            signing_keys=self.secret,
            ca_file=self.certs / "ca.pem",
            certfile=None if client is None else self.certs / f"{client}.pem",
            keyfile=None if client is None else self.certs / f"{client}-key.pem",
            **options,
        )


class Receiver:
    """The example receiver as a real `mtls-hooks serve` process, its output in a file."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self, argv: list[str], env: dict[str, str], port: int) -> None:
        with self.log_path.open("wb") as sink:
            self.process = subprocess.Popen(
                argv, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=ROOT
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"demo: the receiver exited early:\n{self.log()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return
            time.sleep(0.05)
        raise SystemExit("demo: the receiver did not start listening in time")

    def wait_for(self, predicate: Callable[[str], bool], timeout_s: float = 5.0) -> str:
        """Wait (bounded) until the receiver's output satisfies ``predicate``."""
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.log()
            if predicate(text) or time.monotonic() > deadline:
                return text
            time.sleep(0.05)

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            return self.process.wait(STOP_TIMEOUT_S)


def handled_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("handled ")]


def refused(setup: Setup, client: str | None) -> bool:
    """Try one delivery as ``client``; True when it was refused."""
    # One try: a handshake refusal under TLS 1.3 looks like a dropped connection, which the
    # default policy would retry for hours.
    once = RetryPolicy.default().replace(stop=stop_after_attempt(1))
    with setup.sender(client, retry=once) as sender:
        try:
            sender.send(setup.url, {"probe": True}, event_type="invoice.paid")
        except DeliveryError:
            return True
    return False


def tampered_status(setup: Setup) -> httpx.Response:
    """Sign one body, send another: what a middlebox rewriting the payload would do."""
    signed = b'{"type":"invoice.paid","data":{"amount":4200}}'
    sent = b'{"type":"invoice.paid","data":{"amount":9999}}'
    signer = Signer([HmacSecret.parse(setup.secret)])
    headers = signer.sign(signed, webhook_id=Signer.new_webhook_id()).as_dict()
    certs = setup.certs
    context = create_client_context(
        ca_file=certs / "ca.pem", certfile=certs / "client.pem", keyfile=certs / "client-key.pem"
    )
    with httpx.Client(verify=context, trust_env=False) as client:
        return client.post(
            setup.url, content=sent, headers={**headers, "content-type": "application/json"}
        )


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mtls-hooks-demo-") as tmp:
        yield Path(tmp)


def main() -> int:
    started = time.monotonic()
    story = Narrative()
    print("mtls-hooks demo: signed webhooks over pinned mutual TLS, on 127.0.0.1\n", flush=True)
    certs_tool = str(BIN / "certs-tool")
    with scratch_dir() as tmp:
        certs = tmp / "certs"
        run(certs_tool, "quickstart", str(certs))
        pin = run(certs_tool, "pin", str(certs / "client.pem")).strip()
        story.step(f"certs-tool quickstart: CA, server and client certificates in {certs}")
        run(certs_tool, "client", "--ca", str(certs), "--out", str(certs / "intruder"), "intruder")
        story.step("certs-tool client: a second client 'intruder' from the same CA, not pinned")

        secret = HmacSecret.generate().export()
        env = {**os.environ, "WEBHOOK_SECRET": secret, "PYTHONUNBUFFERED": "1"}
        port = free_port()
        receiver = Receiver(tmp / "receiver.log")
        # fmt: off
        receiver.start([
            str(BIN / "mtls-hooks"), "serve", "examples.receiver_app:app",
            "--cert", str(certs / "server.pem"), "--key", str(certs / "server-key.pem"),
            "--client-ca", str(certs / "ca.pem"), "--pin", pin,
            "--bind", f"127.0.0.1:{port}",
        ], env, port)
        # fmt: on
        setup = Setup(
            story, receiver, f"https://localhost:{port}/webhooks", certs, secret, pin, env
        )
        try:
            story.step(f"receiver up (pid {receiver.pid}) on 127.0.0.1:{port}, pinned to {pin}")
            story_events(setup)
            story_refusals(setup)
            story_replay(setup)
        finally:
            status = receiver.stop()
        story.step(f"receiver stopped by PID (exit status {status})", status == 0)
    elapsed = time.monotonic() - started
    verdict = "every expectation held" if not story.failures else f"{story.failures} FAILED"
    print(f"\n{story.steps} steps in {elapsed:.1f} s: {verdict}", flush=True)
    return 1 if story.failures else 0


def story_events(setup: Setup) -> None:
    certs = setup.certs
    # fmt: off
    sent = run(
        sys.executable, "-m", "examples.send_sync", setup.url,
        "--cert", str(certs / "client.pem"), "--key", str(certs / "client-key.pem"),
        "--ca", str(certs / "ca.pem"), env=setup.env,
    )
    # fmt: on
    setup.story.step(f"examples/send_sync.py delivered {len(sent.splitlines())} signed events:")
    for line in sent.splitlines():
        print(f"      sender   {line}", flush=True)
    log = setup.receiver.wait_for(lambda text: len(handled_lines(text)) >= 3)
    lines = handled_lines(log)
    for line in lines:
        print(f"      receiver {line}", flush=True)
    setup.story.step(
        "each handler ran once and saw the caller's verified identity (client, its pin)",
        len(lines) == 3 and all(line.endswith(f"from client ({setup.pin})") for line in lines),
    )


def refusal_line(log: str, reason: str) -> str | None:
    """The receiver's one-line log of a refused handshake, trimmed to its key fields."""
    for line in log.splitlines():
        if "event=handshake_refused" in line and f"reason={reason}" in line:
            fields = line[line.index("event=") :]
            return fields.split(" detail=")[0]
    return None


def story_refusals(setup: Setup) -> None:
    for client, reason, what in (
        ("intruder", "unpinned", "unpinned client from the same CA"),
        (None, "no-certificate", "client without a certificate"),
    ):
        was_refused = refused(setup, client)
        log = setup.receiver.wait_for(functools.partial(_has_refusal, reason=reason))
        line = refusal_line(log, reason)
        setup.story.step(
            f"{what}: refused in the TLS handshake, the sender saw a dropped connection",
            was_refused and line is not None,
        )
        print(f"      receiver {line}", flush=True)
    answer = tampered_status(setup)
    problem = answer.json() if "json" in answer.headers.get("content-type", "") else {}
    setup.story.step(
        f"tampered body: answered {answer.status_code} {answer.headers.get('content-type')}",
        answer.status_code == 401 and problem.get("reason") == "bad-signature",
    )
    print(f"      receiver detail: {problem.get('detail')}", flush=True)


def _has_refusal(text: str, *, reason: str) -> bool:
    return refusal_line(text, reason) is not None


def story_replay(setup: Setup) -> None:
    before = len(handled_lines(setup.receiver.log()))
    webhook_id = Signer.new_webhook_id()
    event = {"invoice": "in_9"}
    with setup.sender() as sender:
        first = sender.send(setup.url, event, event_type="invoice.paid", webhook_id=webhook_id)
        again = sender.send(setup.url, event, event_type="invoice.paid", webhook_id=webhook_id)
    log = setup.receiver.wait_for(lambda text: len(handled_lines(text)) > before)
    runs = sum(webhook_id in line for line in handled_lines(log))
    setup.story.step(
        f"replayed webhook-id {webhook_id}: answered {first.status_code} then"
        f" {again.status_code}, handler ran {runs} time(s)",
        first.ok and again.ok and runs == 1,
    )


if __name__ == "__main__":
    raise SystemExit(main())
