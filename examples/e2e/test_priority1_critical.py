"""P1: a user can reach the service, connect with their token and be greeted; nobody gets in without one."""

from __future__ import annotations

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from e2e_helpers import BASE_URL, TEST_USER, WS_URL, recv_json

pytestmark = pytest.mark.critical


@pytest.mark.smoke
def test_health_endpoint_reports_a_build() -> None:
    response = httpx.get(f"{BASE_URL}/health", timeout=5)
    assert response.status_code == 200
    assert response.json().get("version"), "health does not say which build it serves"


async def test_websocket_connection_with_auth(auth_subprotocol: str, auth_headers: dict[str, str]) -> None:
    async with connect(WS_URL, subprotocols=[auth_subprotocol], additional_headers=auth_headers) as ws:
        assert ws.subprotocol == auth_subprotocol, "the server did not echo the jwt subprotocol"
        ready = await recv_json(ws)
        assert ready["type"] == "connection_established"
        assert ready["payload"]["user_id"] == TEST_USER


async def test_connection_without_token_is_refused() -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(WS_URL, additional_headers={"X-E2E-Test": "true"}):
            pass
    assert refused.value.response.status_code in (401, 403)
