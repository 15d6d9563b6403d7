"""The auth-path matrix (`probes/matrix.py`, `stagewatch matrix`): one connection per token transport against the
sandbox's faults and hostile servers, the conclusion drawn from the evidence, and the command's exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from probes.config import Config, Timeouts, resolve_target
from probes.matrix import MatrixRow, conclude, run_matrix
from probes.options import RunOptions
from probes.sandbox import Sandbox, SandboxOptions
from tests.conftest import run_sandbox

ROOT = Path(__file__).resolve().parent.parent
STAGEWATCH = [sys.executable, "-m", "tui.cli"]
SECRET_ENV = {"JWT_SECRET_KEY": "k" * 32}
JWT_RE = re.compile(r"eyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]{8,}")
HEADER_STRIPPED = "the Authorization header does not reach the backend; the subprotocol does: a proxy strips it"
BOTH_STRIPPED = ("the Authorization header does not reach the backend and neither does the subprotocol; the query "
                 "parameter does: a proxy strips both headers")


async def _matrix(config: Config, fault: str = "none"):
    return await run_matrix(config, resolve_target(config, "sandbox"), RunOptions(fault=fault))


def _row(result, transport: str):
    return next(r for r in result.rows if r.transport == transport)


def _shown(result) -> str:
    return result.render_text() + result.render_markdown() + result.render_json()


async def test_healthy_sandbox_every_transport_works(fast_config):
    result = await _matrix(fast_config)
    assert [r.transport for r in result.rows] == ["subprotocol", "header", "query", "both", "none"]
    assert result.ok and result.conclusion.startswith("every transport works (")
    assert "without a token the backend refuses the connection (HTTP 401)" in result.conclusion
    for r in result.rows[:4]:
        assert r.status == 101 and r.ready and r.ready_ms is not None and r.close_code is None
        assert r.echo is not None and r.echo.compared
    assert _row(result, "both").echo.authorization and _row(result, "both").echo.subprotocol  # type: ignore[union-attr]
    assert _row(result, "none").status == 401 and not _row(result, "none").ready
    assert not JWT_RE.search(_shown(result))  # the token never whole


async def test_strip_auth_header_names_the_stripped_header(fast_config):
    result = await _matrix(fast_config, "strip-auth-header")
    assert result.conclusion == HEADER_STRIPPED and not result.ok
    header = _row(result, "header")
    assert header.status == 401 and header.echo is not None and header.echo.arrived("header") is False
    both = _row(result, "both")
    assert both.ready and both.echo is not None
    assert both.echo.arrived("header") is False and both.echo.arrived("subprotocol") is True
    assert _row(result, "subprotocol").ready and result.failing == ["header"]
    text = result.render_text()
    assert "Authorization absent (stripped)" in text and f"conclusion: {HEADER_STRIPPED}" in text


async def test_strip_auth_names_both_headers(fast_config):
    result = await _matrix(fast_config, "strip-auth")
    assert result.conclusion == BOTH_STRIPPED and not result.ok
    assert [_row(result, t).status for t in ("subprotocol", "header", "both")] == [401, 401, 401]
    assert _row(result, "query").ready and result.working == ["query"]


@pytest.mark.parametrize("fault, answer", [("auth-rejected", "HTTP 403"), ("auth-close", "close 1008 'invalid token'"),
                                           ("clock-skew", "HTTP 401")])
async def test_a_refused_token_is_the_token_not_the_transport(fast_config, fault, answer):
    result = await _matrix(fast_config, fault)
    assert result.conclusion == (f"the token reaches the backend and is refused ({answer} for every transport): the "
                                 "token, not the transport")


async def test_same_failure_everywhere_is_not_an_auth_path_problem(fast_config):
    result = await _matrix(fast_config, "closed-before-ready")
    assert result.conclusion.startswith("every transport fails alike (close 1000 'main cleanup')")
    assert _row(result, "header").close_code == 1000 and _row(result, "header").close_by == "server"


async def test_without_an_echo_endpoint_it_says_what_it_cannot_tell(fast_config):
    protocol = fast_config.protocol.model_copy(update={"echo_headers_path": None})
    config = fast_config.model_copy(update={"protocol": protocol})
    result = await _matrix(config, "strip-auth-header")
    assert all(r.echo is None for r in result.rows)
    assert result.conclusion.startswith("the subprotocol, the query parameter and subprotocol+header together work; "
                                        "the Authorization header does not (HTTP 401): stripped on the way or not "
                                        "accepted (set protocol.echo_headers_path")
    assert "(no echo endpoint)" in result.render_text()


async def test_a_given_sandbox_is_used_and_left_running(fast_config):
    async with Sandbox(SandboxOptions(fault="strip-auth-header")) as sb:
        result = await run_matrix(fast_config, resolve_target(fast_config, "sandbox"), RunOptions(sandbox=sb))
        assert result.base_url == sb.base_url and result.conclusion == HEADER_STRIPPED
        assert sb.listening and sb.connections == 3  # subprotocol, query, both reached the handler


async def test_golden_path_passes_under_strip_auth_header(fast_config):
    """Its default transport is subprotocol+header: the subprotocol still authenticates."""
    out = await run_sandbox(fast_config, "strip-auth-header", only=("golden-path",))
    assert out.result.verdict == "pass"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_nothing_listening_is_one_clear_line(fast_config):
    target = resolve_target(fast_config, url=f"http://127.0.0.1:{_free_port()}")
    result = await run_matrix(fast_config, target, RunOptions(env=SECRET_ENV))
    assert re.fullmatch(r"nothing answers the upgrade at 127\.0\.0\.1:\d+ \(connection refused\): no transport "
                        r"could be tried", result.conclusion)
    assert [r.skipped for r in result.rows[1:]] == ["connection refused"] * 4 and not result.ok


async def test_every_connection_has_a_deadline(fast_config):
    """A server that accepts TCP and never answers: each upgrade and echo ends at its own limit."""
    held: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = fast_config.model_copy(update={"timeouts": Timeouts(http=0.2, connect=0.2, ready=0.2, close=0.2)})
    try:
        start = time.monotonic()
        result = await run_matrix(config, resolve_target(config, url=f"http://127.0.0.1:{port}"),
                                  RunOptions(env=SECRET_ENV))
        elapsed = time.monotonic() - start
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    assert [r.error for r in result.rows] == ["timeout"] * 5
    assert all(r.echo is not None and "0.2 s" in r.echo.error for r in result.rows)
    assert elapsed < 5 and result.conclusion.startswith("nothing answers the upgrade")


async def test_outside_text_is_made_visible_and_tokens_hidden(fast_config):
    """A hostile backend: control characters in a refusal body and a close reason never reach the terminal."""

    def gate(conn: ServerConnection, request: Request) -> Response | None:
        if "Authorization" in request.headers or request.path.split("?")[0] != "/ws":
            return conn.respond(401, f"denied \x1b]0;pwned\x07 {request.headers.get('Authorization', '')}")
        return None

    async def handler(ws: ServerConnection) -> None:
        await ws.close(4001, "bad \x1b[2J token")

    async with serve(handler, "127.0.0.1", 0, process_request=gate) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        result = await run_matrix(fast_config, resolve_target(fast_config, url=f"http://127.0.0.1:{port}"),
                                  RunOptions(env=SECRET_ENV))
    assert _row(result, "header").status == 401 and _row(result, "query").close_code == 4001
    shown = _shown(result)
    assert "\x1b" not in shown and "\x07" not in shown
    assert "\\x1b]0;pwned\\x07" in result.render_text() and "\\x1b[2J" in result.render_text()
    assert not JWT_RE.search(shown) and not JWT_RE.search(_row(result, "header").body)


def _row_of(transport: str, sends: tuple[str, ...], *, ready: bool, status: int = 101) -> MatrixRow:
    return MatrixRow(transport, sends, status=status, ready=ready, subprotocol_echoed=True if ready else None)


def test_a_backend_open_without_a_token_is_not_ok():
    rows = [_row_of(t, s, ready=True) for t, s in (("subprotocol", ("subprotocol",)), ("header", ("header",)),
                                                    ("query", ("query",)), ("both", ("subprotocol", "header")),
                                                    ("none", ()))]
    conclusion, ok = conclude(rows, echo=False)
    assert not ok and "also accepts a connection without a token" in conclusion


def test_a_transport_the_backend_does_not_take():
    rows = [_row_of("subprotocol", ("subprotocol",), ready=True), _row_of("header", ("header",), ready=True),
            _row_of("query", ("query",), ready=False, status=401),
            _row_of("both", ("subprotocol", "header"), ready=True), _row_of("none", (), ready=False, status=401)]
    conclusion, ok = conclude(rows, echo=True)
    assert not ok and conclusion == ("the subprotocol, the Authorization header and subprotocol+header together "
                                     "work; the query parameter does not (HTTP 401)")


# --- the command --------------------------------------------------------------------------------------------------

def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JWT_SECRET_KEY", "STAGEWATCH_CONFIG", "NO_COLOR")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _stagewatch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*STAGEWATCH, *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=_env())


def test_cli_strip_auth_header_prints_the_table_and_exits_1(tmp_path):
    proc = _stagewatch("matrix", "--fault", "strip-auth-header", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("stagewatch matrix → sandbox (ws://127.0.0.1:")
    header = next(line for line in lines if line.startswith("header "))
    assert "401 Unauthorized" in header and "Authorization absent (stripped)" in header
    assert any(line.startswith("transport ") and "backend received (echo)" in line for line in lines)
    assert lines[-1] == f"conclusion: {HEADER_STRIPPED}"


def test_cli_healthy_exits_0_and_json_has_the_rows(tmp_path):
    proc = _stagewatch("matrix", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["conclusion"].startswith("every transport works")
    assert [r["transport"] for r in report["rows"]] == ["subprotocol", "header", "query", "both", "none"]
    assert report["rows"][2]["url"].startswith("ws://127.0.0.1:") and not JWT_RE.search(proc.stdout)


@pytest.mark.parametrize("args, said", [
    (("--url", "http://127.0.0.1:9", "--fault", "strip-auth"), "--fault applies to the embedded sandbox only"),
    (("--url", "http://127.0.0.1:9"), "JWT_SECRET_KEY is not set"),
    (("--json", "--markdown"), "not both"),
])
def test_cli_user_errors_exit_2(tmp_path, args, said):
    proc = _stagewatch("matrix", *args, cwd=tmp_path)
    assert proc.returncode == 2 and said in proc.stderr and not proc.stdout


def test_cli_against_a_standalone_sandbox(tmp_path):
    """`stagewatch sandbox --port 0` in another process: its key comes from the hand-off file."""
    server = subprocess.Popen([*STAGEWATCH, "sandbox", "--fault", "strip-auth-header", "--port", "0"], cwd=tmp_path,
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert server.stdout is not None
        banner = server.stdout.readline()  # printed once it listens
        found = re.search(r"stagewatch sandbox on (http://127\.0\.0\.1:\d+)", banner)
        assert found, banner
        proc = _stagewatch("matrix", "--url", found.group(1), cwd=tmp_path)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "the local sandbox's key" in proc.stdout
        assert proc.stdout.splitlines()[-1] == f"conclusion: {HEADER_STRIPPED}"
    finally:
        server.terminate()
        server.wait(timeout=10)


async def test_an_echo_endpoint_that_answers_404_keeps_the_caveat_and_says_why(fast_config):
    """A broken echo endpoint tells no more than none: the conclusion must not read as if it had looked."""
    from probes.sandbox import Sandbox, SandboxOptions

    async with Sandbox(SandboxOptions(fault="strip-auth-header")) as sandbox:
        target = resolve_target(fast_config, url=sandbox.base_url)
        protocol = target.protocol.model_copy(update={"echo_headers_path": "/no/such/echo"})
        target = target.model_copy(update={"protocol": protocol})
        result = await run_matrix(fast_config, target, RunOptions(), env={"JWT_SECRET_KEY": sandbox.secret})
    assert "stripped on the way or not accepted" in result.conclusion
    assert "the echo endpoint /no/such/echo answered HTTP 404" in result.conclusion
