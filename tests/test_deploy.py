"""The sandbox playing a deploy: the script's parsing, its steps observed as they are applied (build, refusals,
faults, the same port after a restart), one sandbox shared by many rounds, and the standalone sandbox's key
hand-off (stale files of dead sandboxes ignored, the file removed on every terminating signal)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from probes.bus import EventBus
from probes.config import Config, resolve_target
from probes.events import Diagnosed, Event, StageFinished
from probes.handoff import handoff_path, read_handoff, remove_handoff, write_handoff
from probes.runner import RunOptions, RunResult, run_queue, shared_sandbox
from probes.sandbox import SANDBOX_BUILD, DeployStep, Sandbox, SandboxOptions, parse_deploy
from probes.sandbox.deploy import describe

STAGEWATCH = [sys.executable, "-m", "tui.cli"]
ROOT = Path(__file__).resolve().parent.parent
WAIT = 10.0  # an upper bound on waiting for an event, never a pause


# --- parsing ------------------------------------------------------------------------------------------------

def test_parse_a_deploy_script():
    steps = parse_deploy("0s ok@v1, 5s restart, 7s closed-before-ready@v2, 12s ok@v2")
    assert [(s.index, s.offset, s.what, s.build) for s in steps] == [
        (1, 0.0, "ok", "v1"), (2, 5.0, "restart", None), (3, 7.0, "closed-before-ready", "v2"),
        (4, 12.0, "ok", "v2")]
    assert [s.fault for s in steps] == ["none", None, "closed-before-ready", "none"]
    assert [s.listening for s in steps] == [True, False, True, True]
    assert steps[2].text == "7s closed-before-ready@v2"
    lines = describe(steps).splitlines()
    assert len(lines) == 4 and lines[1].startswith("step 2 +5s restart — stops listening")
    assert lines[2].startswith("step 3 +7s closed-before-ready @v2 — accepts the upgrade")


@pytest.mark.parametrize("offset,seconds", [("0s", 0.0), ("1.5s", 1.5), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0)])
def test_offsets(offset, seconds):
    assert parse_deploy(f"{offset} down")[0].offset == pytest.approx(seconds)


@pytest.mark.parametrize("script,message", [
    ("0s ok@v1, 5s restart, 7s closed-befor@v2",
     "--deploy step 3 \"7s closed-befor@v2\": unknown fault 'closed-befor' (faults: ok, down, restart, "
     "closed-before-ready, "),
    ("5s ok, 1s down", "--deploy step 2 \"1s down\": offset 1s comes before the previous step's 5s"),
    ("5 ok", "--deploy step 1 \"5 ok\": bad offset '5' (like 0s, 1.5s, 500ms, 2m or 1h)"),
    ("-1s ok", "--deploy step 1 \"-1s ok\": bad offset '-1s'"),
    ("0s ok@", "--deploy step 1 \"0s ok@\": bad build ''"),
    ("0s ok@v1 extra", "--deploy step 1 \"0s ok@v1 extra\": expected \"<offset> <what>[@<build>]\""),
    ("0s ok,, 1s down", "--deploy step 2 \"\": empty step"),
    ("  ", "--deploy: empty script"),
])
def test_bad_scripts_name_the_step(script, message):
    with pytest.raises(ValueError) as info:
        parse_deploy(script)
    text = str(info.value)
    assert text.startswith(message) and "\n" not in text


# --- a sandbox playing a deploy ----------------------------------------------------------------------------

async def _health(client: httpx.AsyncClient, sb: Sandbox) -> str:
    resp = await client.get(f"{sb.base_url}/health")
    assert resp.status_code == 200
    return str(resp.json()["version"])


async def _step(sb: Sandbox, index: int) -> DeployStep:
    return await asyncio.wait_for(sb.wait_step(index), WAIT)


async def _run(config: Config, options: RunOptions) -> tuple[RunResult, list[Event]]:
    bus = EventBus()
    events: list[Event] = []
    bus.subscribe(events.append)
    result = await run_queue(config, resolve_target(config, "sandbox"), bus, options)
    return result, events


async def test_deploy_changes_build_refuses_while_restarting_and_keeps_its_port(fast_config):
    seen: list[int] = []
    options = SandboxOptions(deploy=parse_deploy("0s ok@v1, 300ms restart, 450ms closed-before-ready@v2"))
    async with httpx.AsyncClient(trust_env=False) as client:
        async with Sandbox(options, on_step=lambda step: seen.append(step.index)) as sb:
            port = sb.port
            assert sb.applied == 1 and seen == [1]  # a 0s step is in place when start() returns
            assert await _health(client, sb) == "v1" and sb.release_build is None

            assert (await _step(sb, 2)).what == "restart"
            assert not sb.listening and sb.phase.startswith("step 2 +0.3s restart")
            with pytest.raises(httpx.ConnectError):
                await client.get(f"{sb.base_url}/health")

            await _step(sb, 3)
            assert sb.port == port and seen == [1, 2, 3]
            assert await _health(client, sb) == "v2"  # the build of step 3
            result, events = await _run(fast_config, RunOptions(sandbox=sb, only=("golden-path",)))
            assert sb.listening  # run_queue neither started nor stopped it
    assert result.verdict == "fail" and result.base_url == f"http://127.0.0.1:{port}"
    failed = next(e for e in events if isinstance(e, StageFinished) and e.status == "fail")
    assert failed.stage == "handshake"
    codes = [d["code"] for e in events if isinstance(e, Diagnosed) for d in e.diagnoses]
    assert "closed-before-ready" in codes and "version-mismatch" not in codes  # no release build expected


async def test_a_restart_closes_open_sessions_with_1012_and_builds_carry_over(fast_config):
    from probes.auth import mint

    target = resolve_target(fast_config, "sandbox")
    options = SandboxOptions(deploy=parse_deploy("0s ok@v7, 400ms restart, 500ms server-error"))
    async with httpx.AsyncClient(trust_env=False) as client, Sandbox(options) as sb:
        token, _ = mint(target.auth, sb.secret)
        async with connect(f"ws://127.0.0.1:{sb.port}/ws",
                           additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            assert json.loads(await ws.recv())["type"] == "connection_established"
            await _step(sb, 2)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), WAIT)
        assert ws.close_code == 1012
        await _step(sb, 3)
        assert sb.fault == "server-error" and await _health(client, sb) == "v7"  # v7 carried over


async def test_stop_ends_the_deploy_and_the_listener():
    sb = await Sandbox(SandboxOptions(deploy=parse_deploy("0s ok, 100ms down, 1h ok"))).start()
    await _step(sb, 2)
    await sb.stop()  # while down, with a step an hour away
    assert sb.applied == 2 and not sb.listening
    sb2 = await Sandbox(SandboxOptions(deploy=parse_deploy("0s ok, 1h down"))).start()
    port = sb2.port
    await sb2.stop()
    async with httpx.AsyncClient(trust_env=False) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/health")


async def test_without_a_deploy_the_sandbox_expects_its_release_build(fast_config):
    result, _ = await _run(fast_config, RunOptions(fault="version-mismatch", only=("health",)))
    assert result.verdict == "fail"
    async with Sandbox(SandboxOptions(build="custom-1")) as sb:
        assert sb.release_build == "custom-1" and sb.phase == "fault none"
        result, _ = await _run(fast_config, RunOptions(sandbox=sb, only=("health",)))
    assert result.verdict == "pass"


async def test_an_explicit_expected_version_still_applies_during_a_deploy(fast_config):
    async with Sandbox(SandboxOptions(deploy=parse_deploy("0s ok@v2"))) as sb:
        passed, _ = await _run(fast_config, RunOptions(sandbox=sb, only=("health",)))
        failed, _ = await _run(fast_config, RunOptions(sandbox=sb, only=("health",), expected_version="v1"))
    assert passed.verdict == "pass" and failed.verdict == "fail"


async def test_shared_sandbox_serves_every_round_then_stops(fast_config):
    target = resolve_target(fast_config, "sandbox")
    options = RunOptions(only=("health",))
    async with shared_sandbox(target, options) as shared:
        assert shared is not options and shared.sandbox is not None and options.sandbox is None
        first, _ = await _run(fast_config, shared)
        second, _ = await _run(fast_config, shared)
        assert first.base_url == second.base_url == shared.sandbox.base_url
        assert first.verdict == second.verdict == "pass" and shared.sandbox.listening
        async with shared_sandbox(target, shared) as again:  # already shared: not a second sandbox
            assert again is shared
    assert not shared.sandbox.listening
    url = resolve_target(fast_config, url="http://127.0.0.1:9")
    async with shared_sandbox(url, options) as unchanged:
        assert unchanged is options


# --- the key hand-off --------------------------------------------------------------------------------------

@pytest.fixture
def runtime_dir(tmp_path, monkeypatch):
    path = tmp_path / "run"
    path.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(path))
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid names no process now
    return proc.pid


def _plant(port: int, pid: object) -> Path:
    path = write_handoff(port, "k" * 32, SANDBOX_BUILD)
    assert path is not None and path == handoff_path(port)
    data = json.loads(path.read_text())
    data["pid"] = pid
    path.write_text(json.dumps(data))
    return path


def test_a_live_sandboxs_handoff_is_read(runtime_dir):
    path = write_handoff(40001, "k" * 32, None)
    assert path is not None and oct(path.stat().st_mode & 0o777) == "0o600"
    assert read_handoff(40001) == {"secret": "k" * 32, "release_build": None, "pid": os.getpid()}
    remove_handoff(40001)
    assert not path.exists()


def test_a_dead_sandboxs_handoff_is_ignored_and_removed(runtime_dir):
    path = _plant(40002, _dead_pid())
    assert read_handoff(40002) is None
    assert not path.exists()


@pytest.mark.parametrize("pid", [None, 0, -1, True, "123"])
def test_a_handoff_without_a_valid_pid_is_not_trusted(runtime_dir, pid):
    path = _plant(40003, pid)
    assert read_handoff(40003) is None
    assert path.exists()  # nothing to check it against: left alone


def test_remove_leaves_another_sandboxs_file(runtime_dir):
    path = _plant(40004, os.getppid())
    remove_handoff(40004)
    assert path.exists() and read_handoff(40004) is not None


# --- the standalone sandbox -------------------------------------------------------------------------------

def _env(runtime: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JWT_SECRET_KEY", "STAGEWATCH_CONFIG")}
    env.update(PYTHONPATH=str(ROOT), XDG_RUNTIME_DIR=str(runtime))
    return env


def _start(runtime: Path, *args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([*STAGEWATCH, "sandbox", "--port", "0", *args], env=_env(runtime),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # printed once it listens and the hand-off is written
    assert line.startswith("stagewatch sandbox on http://127.0.0.1:"), line + proc.stderr.read()
    return proc, int(line.split()[3].rsplit(":", 1)[1])


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_standalone_sandbox_removes_its_handoff_on_signal(runtime_dir, signame):
    proc, port = _start(runtime_dir)
    try:
        data = read_handoff(port)
        assert data is not None and data["pid"] == proc.pid and data["release_build"] == SANDBOX_BUILD
        proc.send_signal(getattr(signal, signame))
        assert proc.wait(timeout=WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not handoff_path(port).exists()


def test_a_killed_standalone_sandboxs_key_is_not_used(runtime_dir):
    proc, port = _start(runtime_dir)
    proc.kill()
    proc.wait()
    assert handoff_path(port).exists()  # kill -9 leaves it behind …
    assert read_handoff(port) is None  # … and the next reader sees the writer is gone
    assert not handoff_path(port).exists()


def test_standalone_sandbox_plays_a_deploy_and_prints_each_step(runtime_dir):
    proc, port = _start(runtime_dir, "--deploy", "0s ok@v1, 100ms restart, 200ms ok@v2")
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(5)]  # two more banner lines, then the three steps
        assert "no release build" in lines[0]
        steps = lines[2:]
        assert [line.split()[1:3] for line in steps] == [["step", "1"], ["step", "2"], ["step", "3"]]
        assert all(len(line.split()[0]) == len("12:34:56.789") for line in steps)  # the wall time
        assert "+0.1s restart" in steps[1]
        data = read_handoff(port)
        assert data is not None and data["release_build"] is None  # builds change: nothing to expect
        resp = httpx.get(f"http://127.0.0.1:{port}/health", trust_env=False)  # the same port after the restart
        assert resp.json()["version"] == "v2"
        proc.terminate()
        assert proc.wait(timeout=WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("command", ["sandbox", "demo"])
def test_a_bad_deploy_is_a_usage_error(runtime_dir, command):
    proc = subprocess.run([*STAGEWATCH, command, "--deploy", "0s ok@v1, 7s closed-befor@v2"], env=_env(runtime_dir),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith('stagewatch: error: --deploy step 2 "7s closed-befor@v2": unknown fault '
                                  "'closed-befor' (faults: ")
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""
