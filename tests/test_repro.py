"""Reproduce by hand, as printed: the Python form really runs the golden path (minting its own token, or with $TOKEN
from `stagewatch token`) and prints the close code; the default target's lines start a standalone sandbox and work
when run in order; `stagewatch token` reads a standalone sandbox's key; no form holds a token; options that do not
apply are refused in one line (exit 2)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest

from probes.config import resolve_target
from probes.context import ws_url_for
from probes.handoff import remove_handoff, write_handoff
from probes.repro import curl, python_script, render, websocat, wscat
from probes.sandbox import Sandbox, SandboxOptions

SECRET = "repro-secret-0123456789-abcdefghij"
ROOT = Path(__file__).resolve().parent.parent
STAGEWATCH = [sys.executable, "-m", "tui.cli"]
WAIT = 60.0  # an upper bound on a subprocess, never a pause


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """A clean environment: no secret, no token, a private runtime dir, and `stagewatch` on PATH (as printed)."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "stagewatch"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m tui.cli "$@"\n')
    shim.chmod(0o755)
    drop = ("JWT_SECRET_KEY", "TOKEN", "STAGEWATCH_TOKEN", "STAGEWATCH_CONFIG", "XDG_RUNTIME_DIR")
    clean = {k: v for k, v in os.environ.items() if k not in drop}
    clean.update(PYTHONPATH=str(ROOT), XDG_RUNTIME_DIR=str(runtime),
                 PATH=f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return clean


def _stagewatch(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*STAGEWATCH, *args], capture_output=True, text=True, timeout=WAIT, cwd=cwd, env=env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _run_script(script: Path, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, str(script), env=env, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


# --- the Python form against the sandbox ---------------------------------------------------------------------

async def test_python_form_mints_its_own_token_and_prints_the_close(fast_config, tmp_path, env):
    async with Sandbox(SandboxOptions(secret=SECRET)) as sb:
        target = resolve_target(fast_config, url=sb.base_url)
        script = tmp_path / "repro.py"
        script.write_text(python_script(target, ws_url_for(target, sb.base_url)))
        code, text = await _run_script(script, {**env, "JWT_SECRET_KEY": SECRET})  # and no TOKEN
    assert code == 0, text
    assert "subprotocol echoed: yes" in text
    assert "<- {\"type\": \"agent_completed\"" in text
    assert text.strip().splitlines()[-1] == "close: 1000 '' — closed by client"
    assert SECRET not in text and "eyJ" not in text


async def test_python_form_shows_the_servers_close_before_ready(fast_config, tmp_path, env):
    async with Sandbox(SandboxOptions(secret=SECRET, fault="closed-before-ready")) as sb:
        target = resolve_target(fast_config, url=sb.base_url)
        script = tmp_path / "repro.py"
        script.write_text(python_script(target, ws_url_for(target, sb.base_url)))
        code, text = await _run_script(script, {**env, "JWT_SECRET_KEY": SECRET})
    assert code == 1, text
    assert "<-" not in text  # no frame came
    assert text.strip().splitlines()[-2:] == ["the server ended the connection before connection_established",
                                              "close: 1000 'main cleanup' — closed by server"]


async def test_python_form_without_secret_or_token_says_which_to_set(fast_config, tmp_path, env):
    target = resolve_target(fast_config, url="http://127.0.0.1:8765")
    script = tmp_path / "repro.py"
    script.write_text(python_script(target, "ws://127.0.0.1:8765/ws"))
    code, text = await _run_script(script, env)
    assert code == 1
    assert text.strip() == ("repro: set JWT_SECRET_KEY (the signing secret) or TOKEN: "
                            "export TOKEN=$(stagewatch token --url http://127.0.0.1:8765)")


async def test_python_form_reports_a_refused_upgrade(fast_config, tmp_path, env):
    async with Sandbox(SandboxOptions(secret=SECRET, fault="auth-rejected")) as sb:
        target = resolve_target(fast_config, url=sb.base_url)
        script = tmp_path / "repro.py"
        script.write_text(python_script(target, ws_url_for(target, sb.base_url)))
        code, text = await _run_script(script, {**env, "JWT_SECRET_KEY": SECRET})
    assert code == 1
    assert "upgrade refused: HTTP 403 Forbidden instead of 101" in text


# --- a standalone sandbox: `stagewatch token` and the lines as printed -------------------------------------------

@pytest.fixture
def standalone(env, tmp_path):
    """`stagewatch sandbox --port 0 [--fault F]` as a real process with no secret in its environment; yields
    its base URL once it listens (its key is then in its hand-off file)."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> str:
        proc = subprocess.Popen([*STAGEWATCH, "sandbox", "--port", "0", *args], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once it listens and its hand-off is written
        assert line.startswith("stagewatch sandbox on http://127.0.0.1:"), line
        return line.split()[3]

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=WAIT)


async def test_token_reads_a_standalone_sandboxs_key_and_the_sandbox_accepts_it(standalone, env, tmp_path,
                                                                               fast_config):
    url = standalone()
    out = _stagewatch("token", "--url", url, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert out.stdout == token + "\n" and jwt.decode(token, options={"verify_signature": False})["sub"]
    assert out.stderr.count("\n") == 1 and "the local sandbox's key (port" in out.stderr and token not in out.stderr
    target = resolve_target(fast_config, url=url)
    script = tmp_path / "repro.py"
    script.write_text(python_script(target, ws_url_for(target, url)))
    code, text = await _run_script(script, {**env, "TOKEN": token})
    assert code == 0, text
    assert "agent_completed" in text and text.strip().endswith("close: 1000 '' — closed by client")


def test_token_claims_and_ttl(env, tmp_path):
    out = _stagewatch("token", "--url", "http://127.0.0.1:9", "--claims", "sub=alice", "--claims",
                      'permissions=["read"]', "--ttl", "1m", env={**env, "JWT_SECRET_KEY": SECRET}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    claims = jwt.decode(out.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["permissions"] == ["read"] and claims["exp"] - claims["iat"] == 60
    assert claims["email"] == "staging-e2e-user-002@example.com"  # the configured claims stay
    assert "minted HS256 with $JWT_SECRET_KEY" in out.stderr


def test_token_for_auth_mode_env_prints_that_variable(env, tmp_path):
    config = _config(tmp_path, "mode: mint", "mode: env")
    out = _stagewatch("token", "--config", str(config), "--url", "http://127.0.0.1:9",
                      env={**env, "STAGEWATCH_TOKEN": "tok-from-env\n"}, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout == "tok-from-env\n"


def test_the_default_targets_lines_work_in_order(env, tmp_path):
    """`stagewatch repro` against the default target: its lines start a standalone sandbox and get a token with
    its key; run in order (the Python form in place of websocat, which CI lacks), the golden path passes."""
    port = _free_port()
    shell = _stagewatch("repro", "--port", str(port), env=env, cwd=tmp_path)
    assert shell.returncode == 0, shell.stderr
    lines = shell.stdout.splitlines()
    assert f"stagewatch sandbox --port {port} &" in lines
    runnable = [line for line in lines[:next(i for i, line in enumerate(lines) if line.startswith("printf"))]
                if not line.startswith("#")]
    assert runnable == [f"stagewatch sandbox --port {port} &",
                        f"export TOKEN=$(stagewatch token --url http://127.0.0.1:{port} --wait 10s)"]
    script = _stagewatch("repro", "--port", str(port), "--form", "python", env=env, cwd=tmp_path)
    assert f"#   stagewatch sandbox --port {port} &" in script.stdout
    (tmp_path / "repro.py").write_text(script.stdout)
    steps = "\n".join([*runnable, f"{sys.executable} repro.py", "kill %stagewatch", "wait"])
    proc = subprocess.Popen(["bash", "-c", steps], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=WAIT)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the sandbox, should the script have died before its kill
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, out
    assert "agent_completed" in out and "close: 1000 '' — closed by client" in out
    assert f"the local sandbox's key (port {port})" in out


@pytest.mark.skipif(shutil.which("websocat") is None, reason="websocat is not installed")
def test_websocat_form_as_printed_shows_the_close_code_and_reason(standalone, env, tmp_path):
    url = standalone("--fault", "closed-before-ready")
    text = _stagewatch("repro", "--url", url, env=env, cwd=tmp_path).stdout
    out = subprocess.run(["bash", "-c", text], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=WAIT)
    assert 'close: Some(CloseData { status_code: 1000, reason: "main cleanup" })' in out.stdout, out.stdout
    assert "eyJ" not in out.stdout  # the debug lines that dump the headers are filtered out


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_form_as_printed_shows_what_reaches_the_backend_and_the_upgrade(standalone, env, tmp_path):
    url = standalone("--fault", "strip-auth-header")
    text = _stagewatch("repro", "--url", url, "--form", "curl", env=env, cwd=tmp_path).stdout
    out = subprocess.run(["bash", "-c", text], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=WAIT)
    assert '"status": "healthy"' in out.stdout, out.stdout + out.stderr  # health
    assert '"sec-websocket-protocol"' in out.stdout and '"authorization"' not in out.stdout  # stripped on the way
    assert "upgrade: HTTP 101" in out.stdout  # the subprotocol still authenticates
    assert "eyJ" not in out.stdout.replace("eyJhbGciOi…", "")  # the echo shows credentials redacted


@pytest.mark.skipif(shutil.which("wscat") is None or shutil.which("script") is None,
                    reason="wscat (npm) or script (util-linux) is not installed")
def test_wscat_form_as_printed_shows_the_close(standalone, env, tmp_path):
    """wscat says how the server closed only when it runs interactively: under a pseudo-terminal (script(1)),
    read until it does, then stop it."""
    url = standalone("--fault", "closed-before-ready")
    form = tmp_path / "wscat.sh"
    form.write_text(_stagewatch("repro", "--url", url, "--form", "wscat", env=env, cwd=tmp_path).stdout)
    proc = subprocess.Popen(["script", "-qfec", f"bash {form}", "/dev/null"], cwd=tmp_path, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen = b""
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + WAIT
        while b"Disconnected" not in seen or b")" not in seen.split(b"Disconnected", 1)[1]:
            if time.monotonic() > deadline:
                break
            chunk = proc.stdout.read1(4096)  # type: ignore[attr-defined]
            if not chunk:
                break
            seen += chunk
    finally:
        proc.kill()
        proc.wait(timeout=WAIT)
    assert b'Disconnected (code: 1000, reason: "main cleanup")' in seen, seen[-500:]


def test_repro_names_a_sandbox_already_running_instead_of_starting_one(env, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", env["XDG_RUNTIME_DIR"])
    port = _free_port()
    write_handoff(port, "k" * 32, None)  # this test process plays the sandbox: its pid is alive
    try:
        out = _stagewatch("repro", "--port", str(port), env=env, cwd=tmp_path)
    finally:
        remove_handoff(port)
    assert out.returncode == 0
    assert f"already running on port {port} (pid {os.getpid()})" in out.stdout
    assert "stagewatch sandbox --port" not in out.stdout


# --- the text of the forms --------------------------------------------------------------------------------------

def test_no_form_holds_a_token_or_the_secret(env, tmp_path):
    for form in ("websocat", "python", "wscat", "curl"):
        out = _stagewatch("repro", "--url", "http://127.0.0.1:8765", "--form", form,
                          env={**env, "JWT_SECRET_KEY": SECRET, "TOKEN": "eyJhbGciOiJIUzI1NiJ9.e30.sig"}, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert "eyJ" not in out.stdout and SECRET not in out.stdout
        assert "stagewatch token --url http://127.0.0.1:8765" in out.stdout


def test_websocat_form_logs_the_close_and_filters_the_header_dump(fast_config):
    target = resolve_target(fast_config, url="http://127.0.0.1:8765")
    text = websocat(target, "ws://127.0.0.1:8765/ws")
    assert "websocat -vv -n --max-messages-rev 6 " in text  # -vv: the close frame's code and reason
    assert "The close message is" in text and "!/^\\[(DEBUG|INFO|TRACE) /" in text
    assert "\nexport TOKEN=$(stagewatch token --url http://127.0.0.1:8765)\nprintf " in text
    assert '--protocol="jwt.$(printf %s "$TOKEN" | base64 | tr -d \'\\n=\' | tr \'+/\' \'-_\')"' in text
    assert '-H="Authorization: Bearer $TOKEN"' in text and "-H='X-E2E-Test: true'" in text


def test_wscat_and_curl_forms(fast_config):
    target = resolve_target(fast_config, url="http://127.0.0.1:8765")
    text = wscat(target, "ws://127.0.0.1:8765/ws")
    assert text.splitlines()[-1].startswith('wscat -c ws://127.0.0.1:8765/ws -s "jwt.$(printf %s "$TOKEN"')
    assert '-H "Authorization: Bearer $TOKEN"' in text and "Disconnected (code: 1000" in text
    text = curl(target, "http://127.0.0.1:8765")
    assert "curl -sS -i -w '\\n' http://127.0.0.1:8765/health" in text
    assert "http://127.0.0.1:8765/debug/echo-headers" in text and '"Sec-WebSocket-Protocol: jwt.$(' in text
    assert "'upgrade: HTTP %{http_code}\\n'" in text and text.splitlines()[-1].endswith(" http://127.0.0.1:8765/ws")


def test_forms_follow_the_protocol_knobs(fast_config):
    """Token in the query, no subprotocol, a credential header from the environment, a named target."""
    target = resolve_target(fast_config, url="http://127.0.0.1:8765")
    protocol = target.protocol.model_copy(update={"token_transport": ["query"],
                                                  "headers": {"X-E2E-Test": "true", "Cookie": "session=s3cr3t"}})
    target = target.model_copy(update={"protocol": protocol, "name": "staging"})
    for form in ("websocat", "wscat", "curl", "python"):
        text = render(form, target, "http://127.0.0.1:8765")
        assert "s3cr3t" not in text and "stagewatch token --target staging" in text
        if form != "python":
            assert "?token=$TOKEN" in text and '"Cookie: $COOKIE"' in text and "jwt." not in text
            assert "export COOKIE=" in text
    assert "CREDENTIAL_HEADERS = {'Cookie': 'COOKIE'}" in render("python", target, "http://127.0.0.1:8765")


# --- options that do not apply ------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["repro", "--fault", "x"], "No such option '--fault'"),
    (["repro", "--fault", "closed-before-ready"], "No such option '--fault'"),
    (["repro", "--only", "golden-path"], "No such option '--only'"),
    (["repro", "--max-priority", "1"], "No such option '--max-priority'"),
    (["repro", "--python", "--form", "curl"], "--python is --form python"),
    (["repro", "--url", "http://127.0.0.1:8765", "--port", "9000"], "--port applies to the default"),
    (["repro", "--form", "bash"], "Invalid value for '--form'"),
    (["token"], "the embedded sandbox's key lives only inside a run"),
    (["token", "--fault", "x"], "No such option '--fault'"),
    (["token", "--url", "http://127.0.0.1:9", "--claims", "sub"], "expected KEY=VALUE"),
    (["token", "--url", "http://127.0.0.1:9", "--claims", "exp=1"], "use --ttl"),
    (["token", "--url", "http://127.0.0.1:9"], "JWT_SECRET_KEY is not set or empty (the JWT signing secret), and "
                                               "no standalone sandbox on port 9 left its key"),
    (["token", "--url", "http://127.0.0.1:9", "--wait", "100ms"], "nothing answered at http://127.0.0.1:9 "
                                                                  "within 0.1 s"),
])
def test_options_that_do_not_apply_are_refused_in_one_line(env, tmp_path, args, message):
    out = _stagewatch(*args, env=env, cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and out.stdout == ""


def test_claims_and_ttl_are_refused_for_a_token_not_minted(env, tmp_path):
    config = _config(tmp_path, "mode: mint", "mode: env")
    out = _stagewatch("token", "--config", str(config), "--url", "http://127.0.0.1:9", "--ttl", "60",
                      env={**env, "STAGEWATCH_TOKEN": "t"}, cwd=tmp_path)
    assert out.returncode == 2 and "--claims and --ttl apply to minted tokens only" in out.stderr
    assert out.stdout == ""


def _config(tmp_path: Path, old: str, new: str) -> Path:
    from probes.config import packaged_config_text

    text = packaged_config_text()
    assert old in text
    path = tmp_path / "config.yaml"
    path.write_text(text.replace(old, new, 1))
    return path
