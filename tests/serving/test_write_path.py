"""Our write path (``_TLSTCPServer.protocol_send``): the lock-free fast path keeps bytes in
order, and a write after the transport closed ends the connection instead of raising.

A seam, not a TLS mock: a writer that records what it is given and whose drain() waits on an
event, so the interleavings that matter are produced exactly; the real TLS paths are covered
by the serving tests over real handshakes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypercorn.events import Closed, RawData

from mtls_hooks.serving._serving import _TLSTCPServer


class _Transport:
    def __init__(self) -> None:
        self.buffered = 0
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered


class _Writer:
    def __init__(self) -> None:
        self.transport = _Transport()
        self.wire: list[bytes] = []
        self.drained = asyncio.Event()

    def write(self, data: bytes) -> None:
        if self.transport.closing:  # asyncio's TLS transport after its second close
            raise AttributeError("'NoneType' object has no attribute '_write_appdata'")
        self.wire.append(data)
        self.transport.buffered += len(data)

    async def drain(self) -> None:
        await self.drained.wait()
        self.transport.buffered = 0


class _Protocol:
    def __init__(self) -> None:
        self.events: list[Any] = []

    async def handle(self, event: Any) -> None:
        self.events.append(event)


def _server(writer: _Writer) -> tuple[_TLSTCPServer, _Protocol]:
    server = object.__new__(_TLSTCPServer)  # only what protocol_send reads
    protocol = _Protocol()
    server.send_lock = asyncio.Lock()
    server.writer = writer
    server.protocol = protocol
    server._queued_sends = 0
    return server, protocol


def test_a_write_never_overtakes_one_queued_before_it() -> None:
    async def scenario() -> list[bytes]:
        writer = _Writer()
        server, _ = _server(writer)

        def send(data: bytes) -> asyncio.Task[None]:
            return asyncio.create_task(server.protocol_send(RawData(data=data)))

        first = send(b"A")  # written at once, then waits in drain() holding the lock
        await asyncio.sleep(0)
        second = send(b"B")  # queued behind the lock
        await asyncio.sleep(0)
        writer.drained.set()  # A's drain ends: the lock is released, B woken but not run
        third = send(b"C")  # comes in that very moment
        await asyncio.gather(first, second, third)
        return writer.wire

    assert asyncio.run(scenario()) == [b"A", b"B", b"C"]


def test_a_write_after_the_transport_closed_ends_the_connection() -> None:
    async def scenario() -> tuple[list[bytes], list[Any]]:
        writer = _Writer()
        writer.transport.closing = True
        server, protocol = _server(writer)
        await server.protocol_send(RawData(data=b"late"))
        return writer.wire, protocol.events

    wire, events = asyncio.run(scenario())
    assert wire == []
    assert [type(event) for event in events] == [Closed]


def test_an_uncontended_write_goes_straight_out() -> None:
    async def scenario() -> tuple[list[bytes], list[Any]]:
        writer = _Writer()
        server, protocol = _server(writer)
        writer.drained.set()
        await server.protocol_send(RawData(data=b"one"))
        await server.protocol_send(RawData(data=b"two"))
        return writer.wire, protocol.events

    assert asyncio.run(scenario()) == ([b"one", b"two"], [])
