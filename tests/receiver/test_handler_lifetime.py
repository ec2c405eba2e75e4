"""A handler's run is its own: a sender hanging up cannot cut it short or free its id, and app
shutdown waits for it, within a bound.

In process, through Quart's test client: ``connection.disconnect()`` delivers the ASGI
``http.disconnect`` a server sends when the sender hangs up, on which Quart cancels the view.
test_e2e.py does the same over real mTLS, with a sender timeout shorter than the handler.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any, cast

import pytest
from quart import Quart
from quart.testing import QuartClient

from mtls_hooks.core._events import WebhookEvent
from mtls_hooks.receiver._receiver import WebhookReceiver
from mtls_hooks.stores._replay import MemoryDedupeStore
from tests.receiver.conftest import LogLines, Sender

pytestmark = pytest.mark.asyncio


def make_app(sender: Sender, store: MemoryDedupeStore, handler: Callable[..., Any]) -> Quart:
    """An app whose ``invoice.paid`` handler is ``handler``, on a store the test keeps."""
    app = Quart(__name__)
    # Given, not owned: shutdown leaves it open, so a second app can read what the first left.
    hooks = WebhookReceiver(app, path="/h", keys=[sender.key], require_peer=False, store=store)
    hooks.on("invoice.paid")(handler)
    return app


async def hang_up_after_entering(
    client: QuartClient, body: bytes, headers: dict[str, str], entered: threading.Event
) -> None:
    """Deliver, and disconnect once the handler runs (as a sender whose timeout ran out)."""
    async with client.request("/h", method="POST", headers=headers) as connection:
        await connection.send(body)
        await connection.send_complete()
        assert await asyncio.to_thread(entered.wait, 5)
        await connection.disconnect()


async def settled(
    client: QuartClient, body: bytes, headers: dict[str, str], log_lines: LogLines
) -> Any:
    """Deliver again once the handler's run is logged, which happens after its claim settled."""
    await asyncio.to_thread(
        log_lines.wait_for_decision, event_id=headers["webhook-id"], outcome="handled"
    )
    return await client.post("/h", data=body, headers=headers)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_sender_hanging_up_neither_stops_the_handler_nor_frees_its_id(
    sender: Sender, log_lines: LogLines, kind: str
) -> None:
    entered = threading.Event()
    release = threading.Event()
    runs: list[str] = []
    finished: list[str] = []

    def sync_handler(event: WebhookEvent) -> None:
        runs.append(event.id)
        entered.set()
        release.wait(5)
        finished.append(event.id)

    async def async_handler(event: WebhookEvent) -> None:
        runs.append(event.id)
        entered.set()
        await asyncio.to_thread(release.wait, 5)
        finished.append(event.id)

    handler = sync_handler if kind == "sync" else async_handler
    app = make_app(sender, MemoryDedupeStore(), handler)
    body, headers = sender.request()
    async with app.test_app() as test_app:
        client = cast(QuartClient, test_app.test_client())
        try:
            await hang_up_after_entering(client, body, headers, entered)
            during = await client.post("/h", data=body, headers=headers)
        finally:
            release.set()
        after = await settled(client, body, headers, log_lines)
    assert during.status_code == 503
    assert during.headers["Retry-After"] == "5"
    assert json.loads(await during.get_data())["reason"] == "in-flight"
    assert after.status_code == 204
    assert after.headers["Webhook-Duplicate"] == "true"
    assert runs == finished == [headers["webhook-id"]]
    # The disconnected request still writes its decision line, when its handler is done.
    assert [(d["outcome"], d["reason"]) for d in log_lines.decisions] == [
        ("refused", "in-flight"),
        ("handled", None),
        ("duplicate", None),
    ]


async def test_shutdown_waits_for_a_running_handler(sender: Sender) -> None:
    entered = threading.Event()
    shutting_down = asyncio.Event()
    order: list[str] = []

    async def handler(event: WebhookEvent) -> None:
        entered.set()
        await shutting_down.wait()  # still running when the app begins to shut down
        order.append(f"handler finished {event.id}")

    store = MemoryDedupeStore()
    body, headers = sender.request()
    app = Quart(__name__)

    # after_serving functions run in the order registered: this one before the receiver's
    # drain, the next one after it.
    @app.after_serving
    async def began() -> None:
        shutting_down.set()

    hooks = WebhookReceiver(app, path="/h", keys=[sender.key], require_peer=False, store=store)
    hooks.on("invoice.paid")(handler)

    @app.after_serving
    async def drained() -> None:
        order.append("drain over")

    async with app.test_app() as test_app:
        client = cast(QuartClient, test_app.test_client())
        await hang_up_after_entering(client, body, headers, entered)
        assert not order
    assert order == [f"handler finished {headers['webhook-id']}", "drain over"]
    # The drain let the handler complete its claim: the next process sees a duplicate.
    restarted = make_app(sender, store, handler)
    again = await restarted.test_client().post("/h", data=body, headers=headers)
    assert again.headers["Webhook-Duplicate"] == "true"
    assert len(order) == 2


async def test_shutdown_cancels_a_handler_outlasting_the_bound(
    sender: Sender, log_lines: LogLines
) -> None:
    entered = threading.Event()
    ended: list[str] = []
    now_s = [1000.0]

    async def stuck(event: WebhookEvent) -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise

    store = MemoryDedupeStore(lease_s=60, clock=lambda: now_s[0])
    body, headers = sender.request()
    app = make_app(sender, store, stuck)
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = 0.1
    # A liveness guard, not a timing check: a drain that never cancels fails instead of hanging.
    async with asyncio.timeout(30):
        async with app.test_app() as test_app:
            client = cast(QuartClient, test_app.test_client())
            await hang_up_after_entering(client, body, headers, entered)
    assert ended == ["cancelled"]
    warning = log_lines.records[-1]
    assert warning.levelname == "WARNING"
    # The configured bound is the one applied.
    assert warning.getMessage().startswith(
        "cancelling 1 webhook handler(s) still running 0.1 s after shutdown began"
    )

    # The id stays claimed for its lease (a sync handler's thread could still be running),
    # then the sender's retry runs the handler again.
    ran: list[str] = []
    restarted = make_app(sender, store, lambda event: ran.append(event.id))
    retrying = restarted.test_client()
    assert (await retrying.post("/h", data=body, headers=headers)).status_code == 503
    now_s[0] += 61
    assert (await retrying.post("/h", data=body, headers=headers)).status_code == 204
    assert ran == [headers["webhook-id"]]
