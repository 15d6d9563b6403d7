"""The tapped connection: fragmented messages are reassembled, invalid UTF-8 closes 1007, order is kept."""

from __future__ import annotations

import json

from websockets.asyncio.server import serve

from probes.events import Closed, Frame, StageFinished
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
