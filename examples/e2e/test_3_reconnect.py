"""P3: a client that closes and reconnects with the same token is greeted again, on a new connection."""

from __future__ import annotations

import pytest
from websockets.asyncio.client import connect

from e2e_helpers import WS_URL, recv_json


@pytest.mark.priority3
async def test_reconnect_with_the_same_token(auth_subprotocol: str, auth_headers: dict[str, str]) -> None:
    ids = []
    for _ in range(2):
        async with connect(WS_URL, subprotocols=[auth_subprotocol], additional_headers=auth_headers) as ws:
            ready = await recv_json(ws)
            assert ready["type"] == "connection_established"
            ids.append(ready["payload"]["connection_id"])
    assert ids[0] != ids[1]
