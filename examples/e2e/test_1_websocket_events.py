"""P2: the agent's events arrive, all five, in order — with the asyncio client and with the sync one."""

from __future__ import annotations

import json

from websockets.asyncio.client import connect
from websockets.sync.client import connect as sync_connect

from e2e_helpers import AGENT_EVENTS, TIMEOUT_S, WS_URL, recv_json, run_agent


async def test_agent_events_arrive_in_order(auth_subprotocol: str, auth_headers: dict[str, str]) -> None:
    async with connect(WS_URL, subprotocols=[auth_subprotocol], additional_headers=auth_headers) as ws:
        assert (await recv_json(ws))["type"] == "connection_established"
        frames = await run_agent(ws, "what is 2 + 2?")
    assert [f["type"] for f in frames] == AGENT_EVENTS
    assert "4" in frames[-1]["payload"]["response"]


def test_sync_client_is_greeted(auth_subprotocol: str, auth_headers: dict[str, str]) -> None:
    with sync_connect(WS_URL, subprotocols=[auth_subprotocol], additional_headers=auth_headers,
                      open_timeout=TIMEOUT_S) as ws:
        ready = json.loads(ws.recv(timeout=TIMEOUT_S))
        assert ready["type"] == "connection_established"
