"""nginx with ``ssl_verify_client on`` as a real mTLS peer nobody here wrote.

``run_nginx`` writes a minimal configuration into a scratch directory (pid file, logs and
temp paths all inside it), starts ``nginx -p WORKDIR -c nginx.conf`` in the foreground on an
ephemeral 127.0.0.1 port, waits until the port accepts, and stops the master by PID on exit
(SIGQUIT, then SIGKILL to its process group after a bound). The sender tests and the
benchmarks use it::

    with run_nginx(tmp_path, cert=server_cert, key=server_key, client_ca=ca_pem) as nginx:
        httpx.post(nginx.url, ...)
        assert nginx.access_entries()[-1]["status"] == "200"

The access log is one JSON object per request (``escape=json``), so a subject DN with spaces
or quotes parses safely; see ``ACCESS_FIELDS`` for the keys.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ACCESS_FIELDS",
    "NginxServer",
    "NginxStartError",
    "Response",
    "nginx_available",
    "nginx_binary",
    "run_nginx",
]

# Debian installs nginx in /usr/sbin, which is not on a non-root user's PATH.
_EXTRA_PATH = ("/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin")
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0
# A port picked free can be taken before nginx binds it; retry a few times.
_BIND_ATTEMPTS = 3

#: Keys of every access-log entry (values are strings, as nginx logs them).
ACCESS_FIELDS = (
    "method",
    "uri",
    "status",
    "request_length",
    "body_bytes_sent",
    "ssl_client_verify",
    "ssl_client_s_dn",
    "ssl_client_serial",
    "ssl_protocol",
    "connection",
    "connection_requests",
    "webhook_id",
    "webhook_timestamp",
    "webhook_signature",
    "content_type",
    "content_length",
    "user_agent",
)
_LOG_FORMAT = (
    "'{"
    '"method":"$request_method","uri":"$request_uri","status":"$status",'
    '"request_length":"$request_length","body_bytes_sent":"$body_bytes_sent",'
    '"ssl_client_verify":"$ssl_client_verify","ssl_client_s_dn":"$ssl_client_s_dn",'
    '"ssl_client_serial":"$ssl_client_serial","ssl_protocol":"$ssl_protocol",'
    '"connection":"$connection","connection_requests":"$connection_requests",'
    '"webhook_id":"$http_webhook_id","webhook_timestamp":"$http_webhook_timestamp",'
    '"webhook_signature":"$http_webhook_signature","content_type":"$content_type",'
    '"content_length":"$content_length",'
    '"user_agent":"$http_user_agent"'
    "}'"
)


@dataclass(frozen=True)
class Response:
    """A canned answer for one nginx location.

    Attributes:
        status: HTTP status code.
        body: Response body (nginx ``return`` text).
        headers: Extra response headers, sent for every status (``add_header ... always``),
            e.g. ``{"Retry-After": "2"}`` for a throttling 429/503.
    """

    status: int
    body: str = ""
    headers: Mapping[str, str] | None = None

    def directives(self) -> str:
        """Render the location body as nginx directives."""
        lines = [
            f"add_header {name} {_quote(value)} always;"
            for name, value in (self.headers or {}).items()
        ]
        lines.append("default_type text/plain;")
        lines.append(
            f"return {self.status} {_quote(self.body)};" if self.body else f"return {self.status};"
        )
        return " ".join(lines)


@dataclass(frozen=True)
class NginxServer:
    """A running nginx; valid inside the ``run_nginx`` block only.

    Attributes:
        port: The 127.0.0.1 TCP port nginx listens on (TLS).
        pid: PID of the nginx master process.
        access_log: JSON-lines access log, one object per request (``ACCESS_FIELDS``).
        error_log: nginx error log (level ``info``: handshake refusals are logged there).
        workdir: The prefix directory holding the configuration, pid file and logs.
    """

    port: int
    pid: int
    access_log: Path
    error_log: Path
    workdir: Path

    @property
    def url(self) -> str:
        """Base URL; the certificate must be valid for 127.0.0.1 (or use ``localhost``)."""
        return f"https://127.0.0.1:{self.port}"

    def access_entries(self) -> list[dict[str, str]]:
        """Parse the access log so far.

        Returns:
            One dict per logged request, oldest first.
        """
        if not self.access_log.exists():
            return []
        lines = self.access_log.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def wait_for_entries(self, count: int, timeout_s: float = 5.0) -> list[dict[str, str]]:
        """Wait (bounded) until at least ``count`` requests are logged.

        nginx writes the access log after it has sent the response, so a client that has just
        read its answer can look before the line is there.

        Returns:
            The entries, as ``access_entries``; fewer than ``count`` if the bound passed.
        """
        deadline = time.monotonic() + timeout_s
        entries = self.access_entries()
        while len(entries) < count and time.monotonic() < deadline:
            time.sleep(0.01)
            entries = self.access_entries()
        return entries

    def error_text(self) -> str:
        """The error log so far (empty if absent)."""
        return (
            self.error_log.read_text(encoding="utf-8", errors="replace")
            if self.error_log.exists()
            else ""
        )


class NginxStartError(RuntimeError):
    """nginx exited or never accepted connections; the message carries its error log."""


def nginx_binary() -> str | None:
    """Path of the nginx executable, looking in the sbin directories too."""
    search = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_PATH])
    return shutil.which("nginx", path=search)


def nginx_available() -> bool:
    """True when an nginx executable is installed."""
    return nginx_binary() is not None


def _quote(text: str) -> str:
    # nginx has no escape for "$" in a string literal: it would start a variable.
    if "$" in text or "\n" in text:
        msg = f"cannot put {text!r} in an nginx string"
        raise ValueError(msg)
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _location_block(path: str, answer: Response | int | str) -> str:
    if isinstance(answer, int):
        body = Response(answer).directives()
    elif isinstance(answer, Response):
        body = answer.directives()
    else:
        body = answer  # raw nginx directives, for anything the helpers do not cover
    return f"        location = {path} {{ {body} }}\n"


def render_config(
    workdir: Path,
    *,
    port: int,
    cert: Path,
    key: Path,
    client_ca: Path | None,
    verify_client: bool,
    locations: Mapping[str, Response | int | str],
    crl: Path | None,
    worker_cpu: int | None,
    keepalive_requests: int = 10_000_000,
) -> str:
    """Render ``nginx.conf`` text (exposed for debugging failed starts)."""
    if verify_client and client_ca is None:
        msg = "verify_client=True needs client_ca"
        raise ValueError(msg)
    # As root the workers would drop to "nobody" and could not enter a 0700 pytest tmpdir.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    affinity = f"worker_cpu_affinity {1 << worker_cpu:b};\n" if worker_cpu is not None else ""
    tls_client = ""
    if client_ca is not None:
        tls_client += f"        ssl_client_certificate {client_ca};\n"
        tls_client += f"        ssl_verify_client {'on' if verify_client else 'optional'};\n"
        tls_client += "        ssl_verify_depth 4;\n"
    if crl is not None:
        tls_client += f"        ssl_crl {crl};\n"
    extra = "".join(_location_block(path, answer) for path, answer in locations.items())
    temp = "\n".join(
        f"    {kind}_temp_path {workdir / (kind + '_temp')};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
daemon off;
master_process on;
worker_processes 1;
{user}{affinity}pid {workdir / "nginx.pid"};
error_log {workdir / "error.log"} info;
events {{ worker_connections 1024; }}
http {{
    log_format mtls escape=json {_LOG_FORMAT};
    access_log {workdir / "access.log"} mtls;
{temp}
    # Benchmarks and retry tests reuse one connection for many requests.
    keepalive_requests {keepalive_requests};
    keepalive_timeout 75s;
    # "return" discards the request body; a 16k buffer keeps 1 KiB bodies off the disk.
    client_body_buffer_size 16k;
    client_max_body_size 1m;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        # Each new connection pays a full handshake: what the benchmarks measure.
        ssl_session_cache off;
        ssl_session_tickets off;
{tls_client}        # "return" runs before the body is read; nginx then reads and discards it (still
        # decrypting every byte, so keep-alive POSTs work), and request_length logs only
        # the request line and headers: content_length is the body size.
        location / {{ default_type text/plain; return 200 "ok"; }}
{extra}    }}
}}
"""


def _wait_accepting(proc: subprocess.Popen[bytes], port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5),
        ):
            return True
        time.sleep(0.02)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGQUIT)  # graceful: finish in-flight requests
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=_STOP_TIMEOUT_S)
    # The master ran in its own session, so its PID is the group id of its workers too:
    # this reaches a worker orphaned by a master that died first.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=_STOP_TIMEOUT_S)


@contextlib.contextmanager
def run_nginx(
    workdir: Path,
    *,
    cert: Path,
    key: Path,
    client_ca: Path | None,
    verify_client: bool = True,
    locations: Mapping[str, Response | int | str] | None = None,
    crl: Path | None = None,
    worker_cpu: int | None = None,
    keepalive_requests: int = 10_000_000,
) -> Iterator[NginxServer]:
    """Run nginx over TLS on 127.0.0.1 for the duration of the block.

    ``location /`` answers 200 ``ok`` to any method (the body is read and discarded, so
    keep-alive POSTs work). ``locations`` adds exact-match locations: an ``int`` status, a
    ``Response`` (status, body, headers such as ``Retry-After``), or raw nginx directives.

    Args:
        workdir: Scratch directory; receives nginx.conf, nginx.pid, access.log, error.log.
        cert: Server certificate (chain) PEM.
        key: Server private key PEM.
        client_ca: CA bundle clients must chain to; ``None`` disables client certificates.
        verify_client: ``ssl_verify_client on`` (True) or ``optional`` (False).
        locations: Extra ``location = PATH`` answers, e.g. ``{"/status/503": 503}``.
        crl: CRL PEM for the client CA (``ssl_crl``).
        worker_cpu: Pin the single worker to this CPU (``worker_cpu_affinity``).
        keepalive_requests: Requests per connection before nginx closes it (sends
            ``Connection: close``); lower it to exercise a client's reconnection.

    Yields:
        The running server.

    Raises:
        NginxStartError: nginx is missing, exited, or did not accept within the bound.
        ValueError: ``verify_client`` without ``client_ca``.
    """
    binary = nginx_binary()
    if binary is None:
        msg = "nginx is not installed (run .ci/install-peers)"
        raise NginxStartError(msg)
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    error_log = workdir / "error.log"
    last_error = ""
    for _attempt in range(_BIND_ATTEMPTS):
        port = _free_port()
        conf.write_text(
            render_config(
                workdir,
                port=port,
                cert=cert.resolve(),
                key=key.resolve(),
                client_ca=client_ca.resolve() if client_ca is not None else None,
                verify_client=verify_client,
                locations=locations or {},
                crl=crl.resolve() if crl is not None else None,
                worker_cpu=worker_cpu,
                keepalive_requests=keepalive_requests,
            ),
            encoding="utf-8",
        )
        stderr = (workdir / "nginx.stderr").open("wb")
        # -e: without it a non-root nginx first tries /var/log/nginx/error.log.
        proc = subprocess.Popen(
            [binary, "-p", str(workdir), "-c", str(conf), "-e", str(error_log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            if _wait_accepting(proc, port, time.monotonic() + _START_TIMEOUT_S):
                server = NginxServer(
                    port=port,
                    pid=proc.pid,
                    access_log=workdir / "access.log",
                    error_log=error_log,
                    workdir=workdir,
                )
                yield server
                return
        finally:
            _stop(proc)
            stderr.close()
        last_error = (workdir / "nginx.stderr").read_text(errors="replace")
        log = error_log.read_text(errors="replace") if error_log.exists() else ""
        last_error = f"{last_error}\n{log}".strip()
        if "Address already in use" not in last_error:
            break
    msg = f"nginx did not start:\n{last_error[-4000:]}"
    raise NginxStartError(msg)
