"""The app the inbox's real-process tests serve (``mtls-hooks serve``) and process
(``mtls-hooks process-inbox``): one endpoint ``/hooks`` named ``orders`` in inbox mode.

Configured by the environment: the receiver's own ``MTLS_HOOKS_*`` settings (``INBOX_URL``,
``KEYS``, ``INBOX_CONCURRENCY``, ``MAX_BODY_BYTES``, ...) and

* ``INBOX_TEST_RECORDS``: a file that gets one line per handler step, written with
  ``O_APPEND`` and fsynced before the handler goes on, so a ``kill -9`` never loses a line
  that was written: ``<kind> <webhook-id> <generation> <pid> <peer>`` with kind
  ``started`` (the handler began), ``completed`` (it returned) or ``failed`` (it raised);
* ``INBOX_TEST_GENERATION``: which worker generation this process is (default 0).

The event's ``data`` steers the handler: ``{"hold": G}`` records ``started`` and then waits
forever in generation G only (a handler in flight when the test kills its worker);
``{"linger": G}`` records ``completed`` and then waits forever in generation G (its side
effect done, its settlement never written: the window a kill can hit);
``{"fail": N}`` raises on its first N runs (counted from the records), ``{"fail": -1}``
on every run.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, NamedTuple

from quart import Quart

from mtls_hooks.core._events import WebhookEvent
from mtls_hooks.receiver._receiver import WebhookReceiver

ENDPOINT = "orders"


class Record(NamedTuple):
    """One line of the records file."""

    kind: str
    webhook_id: str
    generation: int
    pid: int
    peer: str


def append_record(path: Path, *fields: object) -> None:
    """Append one line and fsync it: whole lines from any number of processes."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (" ".join(str(f) for f in fields) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(path: Path) -> list[Record]:
    """Every record so far (a missing file: none)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        kind, webhook_id, generation, pid, peer = line.split(" ")
        records.append(Record(kind, webhook_id, int(generation), int(pid), peer))
    return records


def build_app() -> Quart:
    """The app, its records file and generation read from the environment."""
    records = Path(os.environ["INBOX_TEST_RECORDS"])
    generation = int(os.environ.get("INBOX_TEST_GENERATION", "0"))
    app = Quart(__name__)
    hooks = WebhookReceiver(app, path="/hooks", name=ENDPOINT, mode="inbox")

    @hooks.on_any
    async def handle(event: WebhookEvent) -> None:
        payload: Any = event.payload
        data = payload.get("data") if isinstance(payload, dict) else None
        data = data if isinstance(data, dict) else {}
        peer = "-" if event.peer is None else (event.peer.spiffe_id or event.peer.subject)
        mark = (event.id, generation, os.getpid(), peer.replace(" ", "_"))
        append_record(records, "started", *mark)
        if data.get("hold") == generation:
            await asyncio.Event().wait()  # never set: this run ends only with its process
        fail = int(data.get("fail", 0))
        if fail:
            failed = sum(r.kind == "failed" and r.webhook_id == event.id
                         for r in read_records(records))  # fmt: skip
            if fail < 0 or failed < fail:
                append_record(records, "failed", *mark)
                raise RuntimeError(f"downstream unavailable ({failed + 1} failure(s))")
        append_record(records, "completed", *mark)
        if data.get("linger") == generation:
            await asyncio.Event().wait()

    return app


app = build_app() if "INBOX_TEST_RECORDS" in os.environ else Quart(__name__)
