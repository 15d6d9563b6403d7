"""Secrets: the JWT secret comes only from the environment, and neither it nor the token (raw, base64url as in
the `jwt.` subprotocol, or its signature) appears anywhere a person or a file can see: stdout and stderr of
`stagewatch run -v`, the recording, the JSON, JUnit and Markdown reports. Recordings are 0600.

The token is known to the test: either minted here and handed over as $STAGEWATCH_TOKEN (auth.mode env), or
minted by stagewatch from $JWT_SECRET_KEY and reconstructed here for every second the run could have used.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from probes.auth import mint
from probes.config import load_config, packaged_config_text
from probes.redact import Redactor, redact_token
from probes.sandbox import Sandbox, SandboxOptions

SECRET = "leak-canary-secret-Qx7vW2pZ9kR4mT8n"
STAGEWATCH = str(Path(sys.executable).with_name("stagewatch"))


def b64url(text: str, padding: bool = False) -> str:
    raw = base64.urlsafe_b64encode(text.encode()).decode()
    return raw if padding else raw.rstrip("=")


def env_token() -> str:
    now = int(time.time())
    return jwt.encode({"sub": "staging-e2e-user-002", "iat": now, "exp": now + 600}, SECRET, algorithm="HS256")


def forbidden(tokens: list[str]) -> dict[str, str]:
    """Every string that must not appear, by a name for the failure message."""
    out = {"secret": SECRET, "secret b64url": b64url(SECRET)}
    for i, token in enumerate(tokens):
        out[f"token {i}"] = token
        out[f"token {i} b64url"] = b64url(token)
        out[f"token {i} b64url padded"] = b64url(token, padding=True)
        signature = token.rsplit(".", 1)[1]
        out[f"token {i} signature"] = signature
        out[f"token {i} signature head"] = signature[:12]  # a cut-off token is a leak too
    return out


@dataclass
class Artifacts:
    returncode: int
    files: dict[str, bytes]

    def assert_clean(self, tokens: list[str]) -> None:
        leaks = [f"{what} in {name}" for name, data in self.files.items()
                 for what, needle in forbidden(tokens).items() if needle.encode() in data]
        assert not leaks, leaks


async def run_cli(base_url: str, tmp: Path, *, mode: str, token: str | None = None) -> Artifacts:
    cfg = tmp / "config.yaml"
    cfg.write_text(packaged_config_text().replace("  mode: mint ", f"  mode: {mode} "), encoding="utf-8")
    paths = {name: tmp / name for name in ("report.json", "report.xml", "report.md", "session.jsonl")}
    env = {**os.environ, "JWT_SECRET_KEY": SECRET, "NO_COLOR": "1"}
    env.pop("STAGEWATCH_TOKEN", None)
    if token is not None:
        env["STAGEWATCH_TOKEN"] = token
    proc = await asyncio.create_subprocess_exec(
        STAGEWATCH, "run", "--config", str(cfg), "--url", base_url, "--verbose",
        "--json", str(paths["report.json"]), "--junit", str(paths["report.xml"]),
        "--markdown", str(paths["report.md"]), "--record", str(paths["session.jsonl"]),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    files = {"stdout": out, "stderr": err} | {name: p.read_bytes() for name, p in paths.items()}
    assert b"Traceback" not in err, err.decode()
    assert stat.S_IMODE(paths["session.jsonl"].stat().st_mode) == 0o600
    for name in ("report.json", "report.xml", "report.md", "session.jsonl"):
        assert files[name], f"{name} is empty"
    assert proc.returncode is not None
    return Artifacts(proc.returncode, files)


@pytest.mark.parametrize("fault, expected", [("none", 0), ("strip-auth", 1), ("closed-before-ready", 1)])
async def test_env_token_never_appears(tmp_path: Path, fault: str, expected: int) -> None:
    token = env_token()
    async with Sandbox(SandboxOptions(fault=fault, secret=SECRET)) as sb:
        art = await run_cli(sb.base_url, tmp_path, mode="env", token=token)
    assert art.returncode == expected, art.files["stdout"].decode() + art.files["stderr"].decode()
    assert redact_token(token).encode() in art.files["stdout"]  # the token is shown, redacted
    art.assert_clean([token])


async def test_minted_token_never_appears(tmp_path: Path) -> None:
    auth = load_config(None).auth
    start = time.time()
    async with Sandbox(SandboxOptions(fault="server-error", secret=SECRET)) as sb:
        art = await run_cli(sb.base_url, tmp_path, mode="mint")
    end = time.time()
    assert art.returncode == 1
    assert b"minted HS256 with $JWT_SECRET_KEY" in art.files["stdout"]
    # every token stagewatch could have minted during the run (iat has one-second resolution)
    tokens = [mint(auth, SECRET, now=float(second))[0] for second in range(int(start) - 1, int(end) + 2)]
    assert any(redact_token(t).encode() in art.files["stdout"] for t in tokens), "reconstruction is off"
    art.assert_clean(tokens)


@asynccontextmanager
async def leaky_server(token: str) -> AsyncIterator[str]:
    """A server that echoes the token and the secret everywhere it can: health body, upgrade response headers,
    the ready frame, an error frame and the close reason."""
    canary = f"token={token} b64={b64url(token)} secret={SECRET}"

    def process_request(conn: ServerConnection, request: Request) -> Response | None:
        if request.path == "/health":
            return conn.respond(200, json.dumps({"status": "ok", "debug": canary}))
        return None

    def process_response(conn: ServerConnection, request: Request, response: Response) -> Response:
        response.headers["X-Debug-Token"] = token
        response.headers["X-Debug-Subprotocol"] = "jwt." + b64url(token)
        response.headers["X-Debug-Key"] = SECRET
        return response

    async def handler(ws: ServerConnection) -> None:
        try:
            await ws.send(json.dumps({"type": "connection_established", "payload": {"echo": canary}}))
            await ws.recv()
            await ws.send(json.dumps({"type": "agent_started", "payload": {"auth": canary}}))
            await ws.send(json.dumps({"type": "error", "payload": {"message": f"rejected {canary}"}}))
            await ws.close(1011, f"key {SECRET}")
        except ConnectionClosed:
            pass

    async with serve(handler, "127.0.0.1", 0, process_request=process_request, process_response=process_response,
                     select_subprotocol=lambda _c, offered: offered[0] if offered else None) as server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def leaky_run(tmp_path: Path) -> tuple[Artifacts, str]:
    token = env_token()
    async with leaky_server(token) as url:
        art = await run_cli(url, tmp_path, mode="env", token=token)
    assert art.returncode == 1
    stdout = art.files["stdout"].decode()
    assert "error frame during the agent run" in stdout  # the evidence is shown, with the values hidden
    assert "…(hidden)" in stdout
    return art, token


async def test_server_echoing_the_token_and_secret_recording_is_clean(leaky_run: tuple[Artifacts, str]) -> None:
    art, token = leaky_run
    assert b"X-Debug-Key" in art.files["session.jsonl"]  # the echoed headers were recorded...
    art.files = {"session.jsonl": art.files["session.jsonl"], "stderr": art.files["stderr"]}
    art.assert_clean([token])  # ...redacted


async def test_server_echoing_the_token_and_secret_reports_are_clean(leaky_run: tuple[Artifacts, str]) -> None:
    art, token = leaky_run
    art.assert_clean([token])


def test_secret_is_read_from_the_environment_only(tmp_path: Path) -> None:
    """A secret written into the config is not a config option: auth names env vars, never values."""
    from probes.config import ConfigError, parse_config
    text = packaged_config_text().replace("  secret_env: JWT_SECRET_KEY", f"  secret: {SECRET}")
    with pytest.raises(ConfigError, match=r"auth\.secret: unknown key"):
        parse_config(text, "c.yaml")


def test_redactor_hides_secrets_entirely_and_tokens_but_for_ends() -> None:
    token = env_token()
    r = Redactor([SECRET, token])
    quoted = json.dumps(SECRET + '"')  # as it appears inside JSON text
    shown = r.text(f"{SECRET} {token} jwt.{b64url(token)} {quoted}")
    assert SECRET[:6] not in shown and SECRET[-4:] not in shown  # a signing key is never shown in part
    assert token not in shown and b64url(token) not in shown
    assert redact_token(token) in shown
    headers = r.headers([("Authorization", f"Bearer {token}"), ("Cookie", "session=abc; other=def"),
                         ("X-Api-Key", "k" * 20)])
    assert headers == {"Authorization": f"Bearer {redact_token(token)}", "Cookie": "…(hidden)",
                       "X-Api-Key": "…(hidden)"}
    assert r.tree({"a": [token, {"b": SECRET}], token: 1}) == {"a": [redact_token(token), {"b": "…(hidden)"}],
                                                               redact_token(token): 1}
    assert redact_token("short-token-value-123") == "…(hidden)"  # a short value is never shown in part


def test_token_info_repr_hides_the_token() -> None:
    from probes.auth import TokenInfo
    token = env_token()
    assert token not in repr(TokenInfo(token, "$STAGEWATCH_TOKEN"))
