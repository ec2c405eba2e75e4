"""Our sender against nginx with ``ssl_verify_client on``: a receiver nobody here wrote.

    python -m examples.nginx.run

Issues a CA, a server and two clients with certs_tool, starts nginx on 127.0.0.1 from
``nginx.conf.template``, sends signed events, shows nginx's access log (with the client DN
nginx verified), shows a client from another CA refused, and stops nginx by PID.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tenacity import stop_after_attempt

from certs_tool import CA
from mtls_hooks import DeliveryError, HmacSecret, RetryPolicy, WebhookSender

TEMPLATE = Path(__file__).with_name("nginx.conf.template")
ONE_TRY = RetryPolicy(stop=stop_after_attempt(1), attempt_timeout_s=5.0)


def render(template: str, **values: str) -> str:
    """Replace ``${NAME}``, leaving nginx's own ``$variables`` alone."""
    return re.sub(r"\$\{(\w+)\}", lambda match: values[match[1]], template)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_nginx(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start nginx in the foreground on a free port; wait (bounded) until it accepts."""
    # Debian keeps nginx in /usr/sbin, which is not on every PATH.
    nginx = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if nginx is None:
        raise SystemExit("nginx is not installed")
    conf = workdir / "nginx.conf"
    # -e: the error log before the config is read (else /var/log/nginx/error.log).
    command = [nginx, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")]
    for _ in range(3):  # a port found free may be taken before nginx binds it: try another
        port = free_port()
        conf.write_text(render(TEMPLATE.read_text(), WORKDIR=str(workdir), PORT=str(port)))
        proc = subprocess.Popen(command, start_new_session=True)
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return proc, port
            except OSError:
                time.sleep(0.05)
        stop_nginx(proc)
    raise SystemExit(f"nginx did not start:\n{(workdir / 'error.log').read_text()}")


def stop_nginx(proc: subprocess.Popen[bytes]) -> None:
    """Stop nginx by its master's PID: SIGQUIT (graceful), then SIGKILL to its group."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGQUIT)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: master PID = group ID
            proc.wait(timeout=5)


def sender(workdir: Path, name: str, server_pin: str) -> WebhookSender:
    return WebhookSender(
        signing_keys=HmacSecret.generate().export(),
        certfile=workdir / f"{name}.pem",
        keyfile=workdir / f"{name}-key.pem",
        ca_file=workdir / "ca.pem",
        pins=[server_pin],  # and we pin nginx's key, checked inside our handshake
        retry=ONE_TRY,
    )


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)  # under root, nginx's workers run as "nobody": let them in
        ca, stranger_ca = CA(), CA()
        ca.cert_pem.write_to_path(workdir / "ca.pem")
        server = ca.issue_server("localhost", "127.0.0.1")
        for name, issued in [
            ("server", server),
            ("billing", ca.issue_client("billing", uris=["spiffe://example.org/billing"])),
            ("stranger", stranger_ca.issue_client("stranger")),
        ]:
            issued.cert_pem.write_to_path(workdir / f"{name}.pem")
            issued.private_key_pem().write_to_path(workdir / f"{name}-key.pem")

        proc, port = start_nginx(workdir)
        url = f"https://127.0.0.1:{port}/webhooks"
        print(f"nginx {proc.pid} listening on 127.0.0.1:{port} with ssl_verify_client on")
        try:
            with sender(workdir, "billing", server.spki_pin) as billing:
                for n in range(3):
                    result = billing.send(url, {"invoice": f"in_{n}"}, event_type="invoice.paid")
                    print(f"sent {result.webhook_id}: {result.status_code}")
            with sender(workdir, "stranger", server.spki_pin) as stranger:
                try:
                    stranger.send(url, {"invoice": "in_x"}, event_type="invoice.paid")
                    refused = False
                except DeliveryError as exc:
                    refused = True
                    print(f"client from another CA: {exc}")
        finally:
            stop_nginx(proc)
        print("nginx access log:")
        lines = (workdir / "access.log").read_text().splitlines()
        for line in lines:
            print(f"  {line}")
    verified = [line.split()[0] for line in lines]  # $ssl_client_verify
    return 0 if refused and verified[:3] == ["SUCCESS"] * 3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
