"""Reproduce-by-hand output: the generated Python script really runs the golden path; no token is printed."""

from __future__ import annotations

import os
import subprocess
import sys

import jwt

from probes.config import resolve_target
from probes.context import ws_url_for
from probes.repro import python_script, websocat
from probes.sandbox import Sandbox, SandboxOptions

SECRET = "repro-secret-0123456789-abcdefghij"


async def test_generated_python_script_runs_the_golden_path(fast_config, tmp_path):
    async with Sandbox(SandboxOptions(secret=SECRET)) as sb:
        target = resolve_target(fast_config, url=sb.base_url)
        script = tmp_path / "repro.py"
        script.write_text(python_script(target, ws_url_for(target, sb.base_url)))
        token = jwt.encode({"sub": "repro-user"}, SECRET, algorithm="HS256")
        import asyncio

        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), env={**os.environ, "TOKEN": token},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "subprotocol echoed: jwt." in text
    assert "agent_completed" in text and "close: 1000" in text


def test_websocat_form_never_contains_a_token(fast_config):
    target = resolve_target(fast_config, url="http://127.0.0.1:8765")
    text = websocat(target, "ws://127.0.0.1:8765/ws")
    assert "$TOKEN" in text and "eyJ" not in text and "JWT_SECRET_KEY" in text
