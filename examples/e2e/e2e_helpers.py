"""Small helpers the e2e tests share: where the backend is, a JWT for the staging test user, and reading frames.

Everything comes from the environment, so the same suite runs against staging in CI and against stagewatch's
embedded sandbox (`stagewatch run --pytest examples/e2e` sets these for it):

    STAGEWATCH_BASE_URL   http(s)://host[:port] of the backend
    STAGEWATCH_WS_URL     its WebSocket URL (default: the base URL as ws(s):// + /ws)
    JWT_SECRET_KEY        the HS256 key the backend verifies tokens with
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from typing import Any

import jwt

BASE_URL = os.environ.get("STAGEWATCH_BASE_URL", "http://127.0.0.1:8765").rstrip("/")
WS_URL = os.environ.get("STAGEWATCH_WS_URL") or BASE_URL.replace("http", "ws", 1) + "/ws"
TEST_USER = "staging-e2e-user-002"
AGENT_EVENTS = ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed"]
TIMEOUT_S = 5.0


def mint_token(secret: str, subject: str = TEST_USER, ttl_s: int = 900) -> str:
    now = int(time.time())
    claims = {"sub": subject, "email": f"{subject}@example.com", "permissions": ["read", "write"],
              "token_type": "access", "iat": now, "exp": now + ttl_s}
    return jwt.encode(claims, secret, algorithm="HS256")


def subprotocol_for(token: str) -> str:
    """The token as the backend expects it in Sec-WebSocket-Protocol: jwt.<base64url(token), no padding>."""
    return "jwt." + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def user_message(text: str) -> str:
    return json.dumps({"type": "user_message", "payload": {"content": text, "thread_id": None}})


async def recv_json(ws: Any, timeout: float = TIMEOUT_S) -> dict[str, Any]:
    message = await asyncio.wait_for(ws.recv(), timeout)
    return json.loads(message)


async def run_agent(ws: Any, text: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Send one message; every frame until agent_completed (inclusive)."""
    await ws.send(user_message(text))
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while not frames or frames[-1].get("type") != "agent_completed":
            frames.append(await recv_json(ws, timeout))
    return frames
