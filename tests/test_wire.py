"""The tapped connection: fragmented messages are reassembled, invalid UTF-8 closes 1007, order is kept."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.frames import CloseCode, Opcode
from websockets.frames import Frame as WsFrame
from websockets.typing import Subprotocol

from probes.events import Closed, Frame, StageFinished
from probes.wire import TappedConnection
from tests.conftest import _url_run


async def _fragmenting_server(ws):
    await ws.send(['{"type": "connection_', 'established", "payload": {}}'])  # one message, two fragments
    async for _ in ws:
        for name in ("agent_started", "agent_thinking", "tool_executing", "tool_completed"):
            await ws.send(json.dumps({"type": name}))
        await ws.send(["not json, fragmented ", "filler"])
        await ws.send(json.dumps({"type": "agent_completed", "payload": {"response": "fragments work"}}))


async def test_fragmented_messages_are_reassembled(fast_config):
    async with serve(_fragmenting_server, "127.0.0.1", 0, select_subprotocol=lambda c, s: s[0] if s else None) \
            as server:
        port = next(iter(server.sockets)).getsockname()[1]
        events = await _url_run(fast_config, f"http://127.0.0.1:{port}", ("golden-path",), skip_health=True)
    stages = {e.stage: e for e in events if isinstance(e, StageFinished)}
    assert stages["handshake"].status == "pass", stages["handshake"].detail
    assert stages["response"].status == "pass" and "fragments work" in stages["response"].detail
    frames = [e.data for e in events if isinstance(e, Frame) and e.direction == "in"]
    assert frames[0] == '{"type": "connection_established", "payload": {}}'
    assert "not json, fragmented filler" in frames


async def _bad_utf8_server(ws):
    await ws.send(json.dumps({"type": "connection_established"}))
    async for _ in ws:
        # a text frame whose payload is not UTF-8, written below websockets' own checks
        await ws.send(b"\xff\xfe not utf-8", text=True)


async def test_invalid_utf8_closes_1007(fast_config):
    async with serve(_bad_utf8_server, "127.0.0.1", 0, select_subprotocol=lambda c, s: s[0] if s else None) \
            as server:
        port = next(iter(server.sockets)).getsockname()[1]
        events = await _url_run(fast_config, f"http://127.0.0.1:{port}", ("golden-path",), skip_health=True)
    agent = next(e for e in events if isinstance(e, StageFinished) and e.stage == "agent")
    assert agent.status == "fail" and "1007 Invalid Frame Payload Data" in agent.detail
    close = next(e for e in events if isinstance(e, Closed))
    assert close.code == 1007 and close.by == "client"


# --- the websockets API wire.py and probe.py rely on (a floor regression fails here, not deep in a run) ---------

async def _bad_utf8_at_once(ws):
    await ws.send(b"\xff\xfe not utf-8", text=True)
    await ws.wait_closed()


async def test_websockets_api_the_probes_rely_on():
    """Every websockets name wire.py/probe.py use, on the installed version (pyproject: websockets>=15.0)."""
    assert (CloseCode.INVALID_DATA, CloseCode.MESSAGE_TOO_BIG) == (1007, 1009)
    assert {op.name for op in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.CLOSE)} == {"TEXT", "BINARY", "CONT",
                                                                                         "CLOSE"}
    assert {"opcode", "data", "fin"} <= {f.name for f in dataclasses.fields(WsFrame)}
    for name in ("process_event", "send_data", "connection_lost", "send", "close", "recv"):
        assert callable(getattr(TappedConnection, name)), name
    # set_connection_exc (17.4+) or set_recv_exc (15.0-17.3): TappedConnection._fail needs one of them
    assert callable(getattr(ClientConnection, "set_connection_exc", None)
                    or getattr(ClientConnection, "set_recv_exc", None))

    async with serve(_echo, "127.0.0.1", 0, select_subprotocol=lambda c, s: s[0] if s else None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        ws = await connect(f"ws://127.0.0.1:{port}/ws", subprotocols=[Subprotocol("jwt.x")], proxy=None,
                           additional_headers={"X-Probe": "1"}, open_timeout=2, close_timeout=1,
                           max_size=1 << 20, create_connection=TappedConnection)
        assert isinstance(ws, TappedConnection)
        assert ws.subprotocol == "jwt.x" and ws.response is not None and ws.request is not None
        assert ws.response.headers.raw_items() and ("X-Probe", "1") in list(ws.request.headers.raw_items())
        assert isinstance(ws.connection_lost_waiter, asyncio.Future) and not ws.connection_lost_waiter.done()
        proto = ws.protocol
        assert callable(proto.fail) and proto.state.name == "OPEN"
        assert (proto.close_rcvd, proto.close_sent, proto.close_rcvd_then_sent) == (None, None, None)
        got: list[str | bytes] = []
        echoed, lost = asyncio.Event(), asyncio.Event()
        ws.attach(lambda message: (got.append(message), echoed.set()), lost.set)
        await ws.send("ping")
        await asyncio.wait_for(echoed.wait(), 2)
        await ws.close(1000, "done")
        await asyncio.wait_for(lost.wait(), 2)
        assert got == ["ping"]
        assert proto.close_sent.code == 1000 and proto.close_rcvd.code == 1000
        assert proto.close_rcvd_then_sent is False and ws.connection_lost_waiter.done()


async def _echo(ws):
    async for message in ws:
        await ws.send(message)


async def test_invalid_status_carries_the_response():
    def refuse(connection, request):
        return connection.respond(403, "no token\n")

    async with serve(_echo, "127.0.0.1", 0, process_request=refuse) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        with pytest.raises(InvalidStatus) as info:
            await connect(f"ws://127.0.0.1:{port}/ws", proxy=None, open_timeout=2,
                          create_connection=TappedConnection)
    r = info.value.response
    assert (r.status_code, r.reason_phrase, bytes(r.body)) == (403, "Forbidden", b"no token\n")
    assert r.headers.raw_items()


class _GoneTransport(TappedConnection):
    """The transport dies while the 1007 close frame is being written: send_data raises once."""

    boom: BaseException | None = None

    def send_data(self) -> None:
        if self.protocol.close_sent is not None and self.boom is None:
            self.boom = BrokenPipeError("the transport went away")
            self.transport.abort()  # connection_lost follows, as for a real broken pipe
            raise self.boom
        super().send_data()


async def test_fail_records_why_when_the_close_frame_cannot_be_sent():
    """`_fail` (invalid UTF-8 → 1007) when sending the close frame raises: the error becomes the close's cause."""
    async with serve(_bad_utf8_at_once, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        ws = await connect(f"ws://127.0.0.1:{port}/ws", proxy=None, open_timeout=2, close_timeout=1,
                           create_connection=_GoneTransport)
        got: list[str | bytes] = []
        lost = asyncio.Event()
        ws.attach(got.append, lost.set)
        await asyncio.wait_for(lost.wait(), 2)
        assert got == [] and ws.boom is not None
        assert ws.protocol.close_sent.code == CloseCode.INVALID_DATA
        with pytest.raises(ConnectionClosedError) as info:
            await ws.recv()
        assert info.value.__cause__ is ws.boom
