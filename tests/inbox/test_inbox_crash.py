"""Inbox crash safety with real processes (issue 11): 200 events accepted with 202 while the
handler worker is ``kill -9``-ed twice; all 200 handled, once each.

``mtls-hooks serve`` (real mTLS, ``MTLS_HOOKS_INBOX_CONCURRENCY=0``: it runs no handlers)
receives the events from our sender, one at a time in a fixed order, while
``mtls-hooks process-inbox`` workers run the handlers, generation after generation.

Why "once" is certain here, not lucky: a few events carry ``{"hold": G}``, and their handler
blocks forever in worker generation G only. With ``--concurrency`` equal to their number
they take every slot, so once all of them started no other handler can start. The test
then waits until every other handler that started has completed *and* the store counts as
many jobs ``done`` as there are completion records, and only then kills: at that moment
the only handlers in flight are the held ones, which never completed, and every completed
one is settled. Posting pauses well before the next generation's held events until the
worker is saturated: a saturated worker claims at most one batch more (first in, first
out, and those claims wait for a slot that never frees), so it never runs them.

A killed run writes nothing to the store (its worker died first): the job's history shows
only the run that finished, and the records file is the witness of the killed one.
"""

from __future__ import annotations

import functools
import re
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtls_hooks import DeliveryResult, Inbox, WebhookSender
from mtls_hooks.queue import AttemptRecord
from tests.inbox.inbox_app import Record, read_records
from tests.inbox.processes import RealPki, serve, start_worker, wait_until
from tests.queue.conftest import pg_schema

EVENTS = 200
HELD = 4
# Each killed generation's held events, by their place in the posting order...
HOLDS = {1: range(20, 20 + HELD), 2: range(100, 100 + HELD)}
# ...and where posting waits until that generation's worker is saturated.
PAUSES = {60: 1, 140: 2}
GATE_S = 60.0

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", "postgresql"])
def inbox_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'inbox.sqlite3'}"
    else:
        with pg_schema() as url:
            yield url


class Poster(threading.Thread):
    """Posts every event in order, one at a time, pausing at each gate until it opens."""

    def __init__(self, sender: WebhookSender, url: str, ids: list[str]) -> None:
        super().__init__(daemon=True)
        self.sender, self.url, self.ids = sender, url, ids
        self.saturated = {generation: threading.Event() for generation in HOLDS}
        self.results: list[DeliveryResult] = []
        self.error: BaseException | None = None
        self._aborted = False

    def run(self) -> None:
        held_in = {n: generation for generation, spots in HOLDS.items() for n in spots}
        try:
            for n, webhook_id in enumerate(self.ids):
                if n in PAUSES:
                    if not self.saturated[PAUSES[n]].wait(GATE_S):
                        raise TimeoutError(f"gate {n} stayed closed for {GATE_S} s")
                    if self._aborted:
                        return
                data = {"n": n, "hold": held_in[n]} if n in held_in else {"n": n}
                self.results.append(self.sender.send(
                    self.url, data, event_type="order.paid", webhook_id=webhook_id
                ))  # fmt: skip
        except BaseException as exc:  # a non-202 answer included: the test reports it
            self.error = exc

    def abort(self) -> None:
        self._aborted = True
        for gate in self.saturated.values():
            gate.set()


def saturated_and_settled(inbox: Inbox, records: Path, generation: int, held: set[str]) -> bool:
    """Every held handler of ``generation`` started, every other one that started there has
    completed, and every completed handler's job is settled ``done`` in the store."""
    seen = read_records(records)
    mine = [r for r in seen if r.generation == generation]
    started = {r.webhook_id for r in mine if r.kind == "started"}
    completed = {r.webhook_id for r in mine if r.kind == "completed"}
    if not held <= started or started - held - completed:
        return False
    all_completed = sum(r.kind == "completed" for r in seen)
    return inbox.status().by_state["done"] == all_completed


def run_generations(
    pki: RealPki, inbox_url: str, records: Path, *, inbox: Inbox, poster: Poster,
    held: dict[int, set[str]],
) -> dict[int, int]:  # fmt: skip
    """Workers 1 and 2 are killed once saturated and settled, 3 runs to the end; returns
    the killed PIDs by generation."""
    worker_args = ("--concurrency", str(HELD), "--lease-s", "2")
    killed: dict[int, int] = {}
    for generation in (1, 2):
        worker = start_worker(pki, inbox_url, records, *worker_args, generation=generation)
        try:
            wait_until(
                functools.partial(
                    saturated_and_settled, inbox, records, generation, held[generation]
                ),
                f"generation {generation} saturated by its held handlers, the rest settled",
                timeout_s=60,
            )
            poster.saturated[generation].set()  # posting goes on while it dies
            worker.kill()  # kill -9: held handlers in flight, their jobs running
            killed[generation] = worker.proc.pid
        finally:
            worker.close()
    worker = start_worker(pki, inbox_url, records, *worker_args, generation=3)
    try:
        wait_until(lambda: inbox.status().by_state["done"] == EVENTS, f"{EVENTS} events done", 60)
        assert worker.terminate() == 0
    finally:
        worker.close()
    return killed


def test_kill_9_twice_mid_handling_loses_nothing_and_handles_nothing_twice(
    inbox_url: str, real_pki: RealPki, tmp_path: Path
) -> None:
    records = tmp_path / "records.log"
    ids = [f"msg_crash_{n:03d}" for n in range(EVENTS)]
    held = {generation: {ids[n] for n in spots} for generation, spots in HOLDS.items()}
    with (
        serve(real_pki, inbox_url, records, inbox_concurrency=0) as node,
        Inbox(inbox_url) as inbox,
        real_pki.sender() as sender,
    ):
        poster = Poster(sender, node.url, ids)
        poster.start()
        try:
            killed = run_generations(
                real_pki, inbox_url, records, inbox=inbox, poster=poster, held=held
            )
            poster.join(GATE_S)
        finally:
            poster.abort()
        assert not poster.is_alive()
        by_state = dict(inbox.status().by_state)
        jobs = {job.meta["webhook_id"]: job for job in inbox.messages(limit=2 * EVENTS)}
        histories = {i: inbox.show(jobs[i].id)[1] for g in held.values() for i in g}
        server_pid = node.child.proc.pid
    server_output = "".join(node.child.output)  # complete: the server has exited

    # The server answered every POST 202 at the first try, while the workers died.
    assert poster.error is None, repr(poster.error)
    assert [r.webhook_id for r in poster.results] == ids
    assert {tuple(a.status_code for a in r.attempts) for r in poster.results} == {(202,)}
    decisions = re.findall(r"mtls_hooks\.receiver webhook (outcome=\S+ status=\d+)", server_output)
    assert Counter(decisions) == {"outcome=queued status=202": EVENTS}
    assert "Traceback" not in server_output
    # 200 handled, 0 lost, 0 handled twice; the store agrees.
    seen = read_records(records)
    completed = [r.webhook_id for r in seen if r.kind == "completed"]
    assert sorted(completed) == ids
    assert server_pid not in {r.pid for r in seen}  # INBOX_CONCURRENCY=0: no handler there
    assert max(Counter(completed).values()) == 1
    assert by_state == {"pending": 0, "running": 0, "done": EVENTS, "failed": 0}
    assert sorted(jobs) == ids
    assert_held_ran_again(seen, held, killed, histories)


def assert_held_ran_again(
    seen: list[Record],
    held: dict[int, set[str]],
    killed: dict[int, int],
    histories: dict[str, list[AttemptRecord]],
) -> None:
    """Each held event was in flight in the worker killed under it, and ran again elsewhere."""
    for generation, held_ids in held.items():
        for webhook_id in held_ids:
            runs = [r for r in seen if r.webhook_id == webhook_id]
            first, *later = [r for r in runs if r.kind == "started"]
            assert (first.generation, first.pid) == (generation, killed[generation])
            assert later, f"{webhook_id} never ran again after the kill"
            [done] = [r for r in runs if r.kind == "completed"]
            assert done.generation > generation
            assert done.pid != killed[generation]
            # The store's history shows the run that finished (see the module docstring).
            last = histories[webhook_id][-1]
            assert last.outcome == "done"
            assert f":{killed[generation]}:" not in last.worker


def test_the_records_would_show_a_kill_between_a_handlers_end_and_its_settlement(
    real_pki: RealPki, tmp_path: Path
) -> None:
    """The failing twin: an event whose handler completed but whose settlement was never
    written (killed in that window) runs again, and the records show it twice. This is the
    at-least-once the worker documents, and the duplicate the main test would notice."""
    url = f"sqlite:///{tmp_path / 'inbox.sqlite3'}"
    records = tmp_path / "records.log"
    with (
        serve(real_pki, url, records, inbox_concurrency=0) as node,
        Inbox(url) as inbox,
        real_pki.sender() as sender,
    ):
        lingering = sender.send(node.url, {"linger": 1}, event_type="order.paid").webhook_id
        worker = start_worker(real_pki, url, records, "--lease-s", "2", generation=1)
        try:
            wait_until(lambda: lingering in completed_ids(records), "the handler's end")
            assert inbox.status().by_state["done"] == 0  # its settlement is never written
            worker.kill()
        finally:
            worker.close()
        worker = start_worker(real_pki, url, records, "--lease-s", "2", generation=2)
        try:
            wait_until(lambda: inbox.status().by_state["done"] == 1, "the event done")
            assert worker.terminate() == 0
        finally:
            worker.close()
    assert Counter(completed_ids(records)) == {lingering: 2}


def completed_ids(records: Path) -> list[str]:
    return [r.webhook_id for r in read_records(records) if r.kind == "completed"]
