"""The order of the checks: a request failing several of them gets the first refusal.

The order is the one ``mtls_hooks/receiver/_pipeline.py`` documents::

    method 405 → peer identity 403 → source IP 403 → HTTP Basic 401 → content type 415
    → size 413 (Content-Length, then while reading) → signature + timestamp 401
    → JSON + event type 400 → dedupe (duplicate 204, in flight 503) → handler

Every pair of stages is tried in one request that fails exactly those two: the answer must be
the earlier stage's. Swapping any two stages (adjacent or not) turns some pair's answer into
the later stage's, so each reordering fails a case here. test_e2e.py repeats one pair (a
disallowed identity from a disallowed address) over real mTLS.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import NamedTuple, cast

import pytest
import pytest_asyncio
from quart import Quart
from quart.testing import QuartClient
from werkzeug.datastructures import Headers

from certs_tool import IssuedCert
from mtls_hooks.core._signing import HmacSecret, Signer
from mtls_hooks.receiver._receiver import WebhookReceiver
from tests.receiver.conftest import LogLines, Recorder, Sender, tls_scope

pytestmark = pytest.mark.asyncio

BASIC = ("hooks", "order-pass")
MAX_BODY_BYTES = 256


class Stage(NamedTuple):
    """One check of the pipeline and the answer a request failing it gets."""

    name: str
    status: int
    reason: str


# In the documented order. "length" and "streamed" are the two halves of the size stage
# (a request has a Content-Length or it has not, so they are never failed together).
STAGES = (
    Stage("method", 405, "method-not-allowed"),
    Stage("identity", 403, "identity-not-allowed"),
    Stage("ip", 403, "ip-not-allowed"),
    Stage("basic", 401, "basic-auth"),
    Stage("content-type", 415, "content-type"),
    Stage("length", 413, "too-large"),
    Stage("streamed", 413, "too-large"),
    Stage("signature", 401, "bad-signature"),
    Stage("json", 400, "malformed-json"),
    Stage("dedupe", 204, "duplicate"),
)
_BY_NAME = {stage.name: stage for stage in STAGES}
PAIRS = [
    pytest.param(first, second, id=f"{first.name}-before-{second.name}")
    for first, second in itertools.combinations(STAGES, 2)
    if {first.name, second.name} != {"length", "streamed"}
]


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@dataclass
class Gate:
    """One endpoint with every check configured, and the id it has already handled."""

    client: QuartClient
    sender: Sender
    recorder: Recorder
    sender_cert: IssuedCert
    stranger_cert: IssuedCert
    done_id: str

    async def send(self, failing: set[str]) -> tuple[int, Headers, bytes]:
        """Send one request that fails exactly the stages in ``failing``."""
        oversized = bool(failing & {"length", "streamed"})
        if "json" in failing:
            body = b"{not json" + (b" " * MAX_BODY_BYTES if oversized else b"")
        else:
            pad = "x" * (MAX_BODY_BYTES if oversized else 8)
            body = json.dumps({"type": "invoice.paid", "pad": pad}).encode()
        assert (len(body) > MAX_BODY_BYTES) is oversized
        signer = Signer([HmacSecret.generate()]) if "signature" in failing else None
        webhook_id = self.done_id if "dedupe" in failing else Signer.new_webhook_id()
        content_type = "text/plain" if "content-type" in failing else "application/json"
        _, headers = self.sender.request(
            body=body, webhook_id=webhook_id, signer=signer, content_type=content_type
        )
        password = "wrong" if "basic" in failing else BASIC[1]
        headers["authorization"] = _basic(BASIC[0], password)
        if "streamed" not in failing:
            headers["content-length"] = str(len(body))
        scope = tls_scope(self.stranger_cert if "identity" in failing else self.sender_cert)
        if "ip" in failing:
            scope["client"] = ("192.0.2.7", 40000)
        method = "GET" if "method" in failing else "POST"
        async with self.client.request(
            "/hooks", method=method, headers=headers, scope_base=scope
        ) as connection:
            # In three pieces, as a body streamed without a length arrives.
            for start in range(0, len(body), len(body) // 3 + 1):
                await connection.send(body[start : start + len(body) // 3 + 1])
            await connection.send_complete()
        response = await connection.as_response()
        return response.status_code, response.headers, await response.get_data(as_text=False)


@pytest_asyncio.fixture
async def gate(
    sender: Sender, sender_cert: IssuedCert, stranger_cert: IssuedCert
) -> AsyncIterator[Gate]:
    app = Quart(__name__)
    hooks = WebhookReceiver(
        app,
        path="/hooks",
        keys=[sender.key],
        allow=["uri:spiffe://test.example/payments/*"],
        ip_allow=["127.0.0.0/8"],
        basic_auth=BASIC,
        max_body_bytes=MAX_BODY_BYTES,
    )
    recorder = Recorder()
    hooks.on("invoice.paid")(recorder.async_handler)
    async with app.test_app() as test_app:
        client = cast(QuartClient, test_app.test_client())
        gate = Gate(client, sender, recorder, sender_cert, stranger_cert, done_id="")
        # The twin of every case: a request failing nothing is handled; its id is the one
        # the "dedupe" stage replays.
        status, _, _ = await gate.send(set())
        assert status == 204
        [event] = recorder.events
        gate.done_id = event.id
        yield gate


@pytest.mark.parametrize(("first", "second"), PAIRS)
async def test_a_request_failing_two_checks_gets_the_first_refusal(
    gate: Gate, log_lines: LogLines, first: Stage, second: Stage
) -> None:
    # Each stage alone gives its own answer: the pair's answer names which one ran first.
    for stage in (second, first):
        status, _, body = await gate.send({stage.name})
        assert status == stage.status, stage.name
        if stage.name != "dedupe":
            assert json.loads(body)["reason"] == stage.reason

    status, _, body = await gate.send({first.name, second.name})

    assert status == first.status
    assert json.loads(body)["reason"] == first.reason
    assert log_lines.last()["reason"] == first.reason
    assert len(gate.recorder.events) == 1, "no handler ran beyond the twin"


async def test_dedupe_answers_only_after_every_check(gate: Gate, log_lines: LogLines) -> None:
    status, headers, _ = await gate.send({"dedupe"})
    assert status == 204
    assert headers["Webhook-Duplicate"] == "true"
    assert log_lines.last()["outcome"] == "duplicate"
    assert len(gate.recorder.events) == 1


async def test_a_request_failing_every_check_gets_the_method_refusal(gate: Gate) -> None:
    everything = {stage.name for stage in STAGES} - {"streamed"}
    status, _, body = await gate.send(everything)
    assert status == 405
    assert json.loads(body)["reason"] == "method-not-allowed"


@pytest.mark.parametrize("stage", [pytest.param(stage, id=stage.name) for stage in STAGES[:-1]])
async def test_each_stage_refuses_whatever_fails_after_it(gate: Gate, stage: Stage) -> None:
    """The request fails this stage and every later one: this stage answers."""
    index = STAGES.index(stage)
    failing = {later.name for later in STAGES[index:]}
    failing.discard("length" if stage.name == "streamed" else "streamed")
    status, _, body = await gate.send(failing)
    assert status == stage.status
    assert json.loads(body)["reason"] == _BY_NAME[stage.name].reason
