"""Rotate a sender's client key with zero failed deliveries, end to end on 127.0.0.1.

    python -m examples.key_rotation

The receiver pins the sender's key A. The new key B is pinned beside A and the receiver
reloads (what SIGHUP or ``systemctl reload`` does to ``mtls-hooks serve``); the sender switches
to B; A's pin is removed and the receiver reloads again. One sender keeps delivering all
along, and must never fail; at the end a new connection with key A must be refused.

The same rotation by hand, with the service of examples/service/::

    certs-tool client --ca ca/ billing --uri spiffe://example.org/billing --out billing-b
    # receiver.toml: pins = ["<A>", "<certs-tool pin billing-b.pem>"]
    systemctl reload mtls-hooks-receiver
    # the sender switches to billing-b.pem and billing-b-key.pem, closing its old connections
    # receiver.toml: pins = ["<B>"]
    systemctl reload mtls-hooks-receiver
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

from quart import Quart
from tenacity import stop_after_attempt

from certs_tool import CA, IssuedCert
from mtls_hooks import (
    DeliveryError,
    HmacSecret,
    RetryPolicy,
    ServerConfig,
    WebhookEvent,
    WebhookReceiver,
    WebhookSender,
)
from mtls_hooks.testing import ServerHandle, running_server

SECRET = HmacSecret.generate().export()
# No retries: a delivery that needed one would count as a failure here, not hide it.
ONE_TRY = RetryPolicy(stop=stop_after_attempt(1), attempt_timeout_s=5.0, deadline_s=None)


def receiver_app() -> Quart:
    app = Quart(__name__)
    hooks = WebhookReceiver(app, path="/webhooks", keys=[SECRET])

    @hooks.on("heartbeat")
    async def heartbeat(event: WebhookEvent) -> None:
        pass

    return app


def pin_only(config_file: Path, *clients: IssuedCert) -> None:
    """Rewrite the receiver's TOML config so that it pins exactly ``clients``."""
    pins = json.dumps([client.spki_pin for client in clients])  # a JSON list is a TOML array
    config_file.write_text(
        f'certfile = "server.pem"\nkeyfile = "server-key.pem"\nclient_ca = ["ca.pem"]\n'
        f"pins = {pins}\n"
    )


def sender_for(workdir: Path, name: str, client: IssuedCert) -> WebhookSender:
    client.cert_pem.write_to_path(workdir / f"{name}.pem")
    client.private_key_pem().write_to_path(workdir / f"{name}-key.pem")
    return WebhookSender(
        signing_keys=SECRET,
        certfile=workdir / f"{name}.pem",
        keyfile=workdir / f"{name}-key.pem",
        ca_file=workdir / "ca.pem",
        retry=ONE_TRY,
    )


def reload(server: ServerHandle) -> None:
    if not server.reload():  # re-reads receiver.toml, as SIGHUP does
        raise RuntimeError("reload failed: the receiver kept its old pins")


class Traffic(threading.Thread):
    """Delivers one event after another, each with whichever sender is current."""

    def __init__(self, url: str, sender: WebhookSender) -> None:
        super().__init__(name="traffic", daemon=True)
        self.url = url
        self.sender = sender
        self.delivered = 0
        self.failures: list[DeliveryError] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.sender.send(self.url, {"n": self.delivered}, event_type="heartbeat")
            except DeliveryError as exc:
                self.failures.append(exc)
            else:
                self.delivered += 1

    def step(self, number: int, what: str, *, count: int = 25, timeout_s: float = 10.0) -> None:
        """Let ``count`` more deliveries through (bounded), then print the step's line."""
        target = self.delivered + count
        deadline = time.monotonic() + timeout_s
        while self.delivered < target and not self.failures and time.monotonic() < deadline:
            time.sleep(0.005)
        print(f"{number}. {what:<44} {self.delivered:>4} delivered, {len(self.failures)} failed")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        ca = CA()
        ca.cert_pem.write_to_path(workdir / "ca.pem")
        server_cert = ca.issue_server("localhost", "127.0.0.1")
        server_cert.cert_pem.write_to_path(workdir / "server.pem")
        server_cert.private_key_pem().write_to_path(workdir / "server-key.pem")
        # The same identity twice, each time with a new key: a new SPKI pin.
        key_a = ca.issue_client("billing", uris=["spiffe://example.org/billing"])
        key_b = ca.issue_client("billing", uris=["spiffe://example.org/billing"])
        config_file = workdir / "receiver.toml"
        pin_only(config_file, key_a)

        with running_server(receiver_app(), ServerConfig.from_toml(config_file)) as server:
            traffic = Traffic(server.url("/webhooks"), sender_for(workdir, "client-a", key_a))
            traffic.start()
            try:
                traffic.step(1, "receiver pins key A; sender uses key A")
                pin_only(config_file, key_a, key_b)
                reload(server)
                traffic.step(2, "key B pinned beside A, receiver reloaded")
                sender_a, traffic.sender = traffic.sender, sender_for(workdir, "client-b", key_b)
                traffic.step(3, "sender switched to key B")
                # A reload applies to new handshakes only: close A's keep-alive connections
                # before its pin goes (or they live until they idle out).
                sender_a.close()
                pin_only(config_file, key_b)
                reload(server)
                traffic.step(4, "key A's pin removed, receiver reloaded")
            finally:
                traffic.done.set()
                traffic.join(10)
                traffic.sender.close()

            with sender_for(workdir, "client-a-again", key_a) as late_a:
                try:
                    late_a.send(server.url("/webhooks"), {}, event_type="heartbeat")
                    refused = False
                except DeliveryError:
                    refused = True
            print(f"5. {'a new connection with key A':<44} {'refused' if refused else 'ADMITTED'}")

    ok = refused and not traffic.failures and not traffic.is_alive()
    outcome = "done" if ok else "FAILED"
    print(f"{outcome}: {traffic.delivered} deliveries, {len(traffic.failures)} failed")
    return 0 if ok else 1


if __name__ == "__main__":
    # The receiver logs why it refused a handshake (on "mtls_hooks.tls"): show it inline.
    logging.basicConfig(stream=sys.stdout, format="   receiver: %(message)s")
    raise SystemExit(main())
