"""The sandbox for held sessions: a rolling restart (exact drops and clean closes, in open order across the drain
window, 503s through the refusal, then the new build), the idle-timeout fault (each session ends at its own age,
pings answered until then), the deploy step `rolling`, the fault's schedule, the counters, and the standalone
sandbox. Clients are plain websockets connections; every wait is on an event or condition with a deadline."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from probes.sandbox import Rollout, Sandbox, SandboxOptions, parse_deploy
from probes.sandbox.faults import FAULTS

WAIT = 10.0  # an upper bound on waiting for an event, never a pause
SLACK = 0.25  # a close seen by the client after the server acted: loop turns and the closing handshake
ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


async def _within(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, WAIT)


def _subprotocol(sb: Sandbox) -> Subprotocol:
    token = jwt.encode({"sub": "held", "exp": int(time.time()) + 600}, sb.secret, algorithm="HS256")
    return Subprotocol("jwt." + base64.urlsafe_b64encode(token.encode()).decode().rstrip("="))


@dataclass
class Held:
    """One client session: when it opened and ended (loop time), the ready frame, pongs it got."""

    ws: ClientConnection
    opened: float
    ready: dict[str, Any]
    ended: float | None = None
    pongs: int = 0
    waiter: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def age(self) -> float:
        assert self.ended is not None
        return self.ended - self.opened


async def _open(sb: Sandbox) -> Held:
    """A session that saw connection_established; its end is timed by a task waiting for the close."""
    ws = await _within(connect(f"ws://127.0.0.1:{sb.port}/ws", subprotocols=[_subprotocol(sb)],
                               ping_interval=None, compression=None))
    held = Held(ws, asyncio.get_running_loop().time(), json.loads(await _within(ws.recv())))
    assert held.ready["type"] == "connection_established"

    async def wait_end() -> None:
        await ws.wait_closed()
        held.ended = asyncio.get_running_loop().time()

    held.waiter = asyncio.create_task(wait_end())
    return held


async def _ended(sessions: list[Held]) -> None:
    await _within(asyncio.gather(*(s.waiter for s in sessions if s.waiter is not None)))


async def _refused(sb: Sandbox) -> int:
    with pytest.raises(InvalidStatus) as info:
        await _open(sb)
    return info.value.response.status_code


async def _health(sb: Sandbox) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=WAIT) as client:
        return await client.get(f"{sb.base_url}/health")


async def _until(sb: Sandbox, predicate: Callable[[], bool]) -> None:
    await _within(sb.wait_for(predicate))


def _dropped(session: Held) -> bool:
    return session.ws.protocol.close_rcvd is None and session.ws.close_code == 1006


# --- the rolling restart ------------------------------------------------------------------------------------

async def test_rolling_restart_drops_every_tenth_closes_the_rest_then_serves_the_new_build():
    async with Sandbox(SandboxOptions(drain_s=0.5, refuse_s=0.4)) as sb:
        sessions = [await _open(sb) for _ in range(20)]
        assert sb.open_sessions == 20 and sb.rollouts == 0 and sb.rollout_phase is None

        rolling = asyncio.create_task(sb.rolling_restart(build="v2"))
        await _until(sb, lambda: sb.rollout_phase == "draining")
        assert "rolling restart: draining" in sb.phase
        assert await _refused(sb) == 503  # out of the load balancer from the drain's start
        await _until(sb, lambda: sb.rollout_phase == "restarting")
        health = await _health(sb)
        assert health.status_code == 503 and health.json()["status"] == "restarting"
        assert int(health.headers["Retry-After"]) >= 1
        assert await _refused(sb) == 503
        rollout: Rollout = await _within(rolling)

        await _ended(sessions)
        assert sb.open_sessions == 0 and sb.rollouts == 1 and sb.last_rollout == rollout
        assert (rollout.sessions, rollout.dropped, rollout.closed, rollout.skipped) == (20, 2, 18, 0)
        assert (rollout.build_before, rollout.build, rollout.code) == ("2026.11.25-sandbox", "v2", 1012)
        assert [i for i, s in enumerate(sessions, start=1) if _dropped(s)] == [10, 20]
        clean = [s for i, s in enumerate(sessions, start=1) if i % 10]
        assert all(s.ws.protocol.close_rcvd is not None and (s.ws.close_code, s.ws.close_reason) == (1012, "service restart")
                   for s in clean)
        # spread evenly in open order: session i of 20 at (i-1)/20 of the 0.5 s window
        for i, s in enumerate(sessions, start=1):
            due = rollout.started + 0.5 * (i - 1) / 20
            assert due <= s.ended <= due + SLACK, (i, s.ended - rollout.started)  # type: ignore[operator]
        assert rollout.drained == pytest.approx(rollout.started + 0.5)
        assert rollout.ended >= rollout.drained + 0.4

        after = await _open(sb)  # the new build answers
        assert after.ready["payload"]["server_build"] == "v2"
        health = await _health(sb)
        assert health.status_code == 200 and health.json()["version"] == "v2"
        assert sb.open_sessions == 1


async def test_drop_every_and_drain_code_are_options_and_builds_stay_without_one():
    async with Sandbox(SandboxOptions(drain_s=0.2, refuse_s=0.0, drop_every=2, drain_code=1001)) as sb:
        sessions = [await _open(sb) for _ in range(5)]
        gone = sessions.pop(2)  # session 3 leaves before the rollout: it is not counted
        await _within(gone.ws.close())
        await _until(sb, lambda: sb.open_sessions == 4)
        rollout = await _within(sb.rolling_restart())
        await _ended(sessions)
    assert (rollout.sessions, rollout.dropped, rollout.closed) == (4, 2, 2)  # ranks 2 and 4 of the four
    assert [_dropped(s) for s in sessions] == [False, True, False, True]
    assert {(s.ws.close_code, s.ws.close_reason) for s in sessions if not _dropped(s)} == {(1001, "going away")}
    assert rollout.build == rollout.build_before == sb.build  # no build given: the same build restarted


async def test_a_session_gone_before_its_turn_is_skipped_and_its_rank_still_counts():
    async with Sandbox(SandboxOptions(drain_s=0.6, refuse_s=0.0, drop_every=2)) as sb:
        sessions = [await _open(sb) for _ in range(3)]
        rolling = asyncio.create_task(sb.rolling_restart())
        await _until(sb, lambda: sb.rollout_phase == "draining")
        await _within(sessions[1].ws.close())  # rank 2 (its turn at 0.2 s) leaves first
        rollout = await _within(rolling)
        await _ended(sessions)
    assert (rollout.sessions, rollout.dropped, rollout.closed, rollout.skipped) == (3, 0, 2, 1)
    assert [s.ws.close_code for s in sessions] == [1012, 1000, 1012]


@pytest.mark.parametrize("options", [dict(drain_code=1000), dict(drain_s=-1.0), dict(drop_every=-1),
                                     dict(idle_close_code=1006), dict(idle_after_s=0.0), dict(rolling_every=0.0)])
def test_bad_options_are_refused(options):
    with pytest.raises(ValueError):
        SandboxOptions(**options)


# --- the rolling-restart fault and the deploy step ------------------------------------------------------------

async def test_the_rolling_restart_fault_rolls_at_rolling_at_to_a_new_build():
    options = SandboxOptions(fault="rolling-restart", rolling_at=0.8, drain_s=0.2, refuse_s=0.1, build="b1")
    async with Sandbox(options) as sb:
        seen: list[Rollout] = []
        sb.on_rollout.append(seen.append)
        assert sb.release_build is None  # builds change by design: nothing to expect
        sessions = [await _open(sb) for _ in range(3)]
        assert sb.rollouts == 0, "the sessions took longer than rolling_at to open"
        rollout = await _within(sb.wait_rollout(1))
        assert seen == [rollout]
        await _ended(sessions)
        assert (rollout.sessions, rollout.dropped, rollout.closed) == (3, 0, 3)
        assert (rollout.build_before, rollout.build) == ("b1", "b1+r1")
        assert [s.ws.close_code for s in sessions] == [1012] * 3
        assert (await _health(sb)).json()["version"] == "b1+r1"
        after = await _open(sb)  # one rollout only (no rolling_every): the session stays
        await _within(after.ws.close())
        assert sb.rollouts == 1


async def test_a_deploy_rolling_step_rolls_the_open_sessions_then_its_build_answers():
    steps = parse_deploy("0s ok@v1, 1s rolling@v2")
    assert (steps[1].what, steps[1].rolling, steps[1].listening, steps[1].fault) == ("rolling", True, True, None)
    assert "rolling restart" in steps[1].describe()
    options = SandboxOptions(deploy=steps, drain_s=0.3, refuse_s=0.2, drop_every=3)
    async with Sandbox(options) as sb:
        sessions = [await _open(sb) for _ in range(3)]
        assert sb.applied == 1, "the sessions took longer than the step's offset to open"
        assert {s.ready["payload"]["server_build"] for s in sessions} == {"v1"}
        step = await _within(sb.wait_step(2))
        assert step.rolling and sb.rollout_phase == "draining" and sb.build == "v1"
        rollout = await _within(sb.wait_rollout(1))
        await _ended(sessions)
        assert (rollout.dropped, rollout.closed, rollout.build_before, rollout.build) == (1, 2, "v1", "v2")
        assert [_dropped(s) for s in sessions] == [False, False, True]
        assert sb.fault == "none" and (await _health(sb)).json()["version"] == "v2"


def test_a_bad_deploy_step_names_rolling_among_the_choices():
    with pytest.raises(ValueError) as info:
        parse_deploy("0s ok, 3s rollin@v2")
    assert str(info.value).endswith(", rolling)")


# --- the idle-timeout fault ------------------------------------------------------------------------------------

async def _ping_until_closed(held: Held, every: float, pinged: asyncio.Event) -> None:
    """Ping every `every` s (paced by waiting for the close with that deadline) until the session ends."""
    while True:
        try:
            await asyncio.wait_for(asyncio.shield(held.ws.wait_closed()), every)
            return
        except TimeoutError:
            pass
        try:
            await asyncio.wait_for(await held.ws.ping(), WAIT)
        except ConnectionClosed:
            return
        held.pongs += 1
        if held.pongs >= 2:
            pinged.set()


async def test_idle_timeout_ends_each_session_at_its_own_age_whatever_its_pings():
    async with Sandbox(SandboxOptions(fault="idle-timeout", idle_after_s=1.0)) as sb:
        sessions: list[Held] = []
        pingers = []
        for _ in range(3):  # staggered: each opens once the one before has had two pongs (≈ 0.3 s)
            held = await _open(sb)
            pinged = asyncio.Event()
            sessions.append(held)
            pingers.append(asyncio.create_task(_ping_until_closed(held, 0.15, pinged)))
            await _within(pinged.wait())
        await _within(asyncio.gather(*pingers))
        await _ended(sessions)
        assert sb.idle_closed == 3 and sb.open_sessions == 0
    assert sessions[1].opened - sessions[0].opened >= 0.3 and sessions[2].opened - sessions[1].opened >= 0.3
    for s in sessions:
        assert s.age == pytest.approx(1.0, abs=0.3) and _dropped(s)
        assert s.pongs >= 4  # answered until the end
    assert sessions[0].ended < sessions[1].ended < sessions[2].ended  # type: ignore[operator]


async def test_idle_timeout_with_a_close_code_sends_a_close_frame():
    async with Sandbox(SandboxOptions(fault="idle-timeout", idle_after_s=0.3, idle_close_code=1001)) as sb:
        held = await _open(sb)
        await _ended([held])
    assert (held.ws.close_code, held.ws.close_reason) == (1001, "max connection age")
    assert held.age == pytest.approx(0.3, abs=0.3)


# --- many held sessions -------------------------------------------------------------------------------------

MANY = 1000


@pytest.fixture
def many_files():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * MANY + 200  # both ends of every session in this process
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"needs {need} open files (hard limit {hard})")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_a_burst_of_many_sessions_is_held_and_rolled_exactly(many_files):
    async with Sandbox(SandboxOptions(drain_s=0.5, refuse_s=0.0, compression=False)) as sb:
        sessions = await _within(asyncio.gather(*(_open(sb) for _ in range(MANY))))  # one burst (the backlog)
        assert sb.open_sessions == MANY and sb.connections == MANY
        pongs = await _within(asyncio.gather(*(s.ws.ping() for s in sessions)))
        await _within(asyncio.gather(*pongs))  # answered by websockets, the server never pings
        rollout = await _within(sb.rolling_restart())
        await _ended(sessions)
        assert sb.open_sessions == 0
    assert (rollout.sessions, rollout.dropped, rollout.closed) == (MANY, MANY // 10, MANY - MANY // 10)
    assert sum(map(_dropped, sessions)) == MANY // 10


# --- the standalone sandbox ------------------------------------------------------------------------------------

def _env(runtime: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JWT_SECRET_KEY", "STAGEWATCH_CONFIG")}
    env.update(PYTHONPATH=str(ROOT), XDG_RUNTIME_DIR=str(runtime))
    return env


def test_the_faults_are_listed(tmp_path):
    assert {"rolling-restart", "idle-timeout"} <= set(FAULTS)
    proc = subprocess.run([sys.executable, "-m", "tui.cli", "sandbox", "--list-faults"], capture_output=True,
                          text=True, timeout=60, env=_env(tmp_path))
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()}
    assert proc.returncode == 0 and "1012 'service restart'" in lines["rolling-restart"]
    assert "1006" in lines["idle-timeout"]


@pytest.mark.parametrize("args", [("--fault", "rolling-restart"), ("--fault", "idle-timeout"),
                                  ("--deploy", "0s ok@v1, 20s rolling@v2")])
def test_the_standalone_sandbox_serves_them(tmp_path, args):
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    proc = subprocess.Popen([sys.executable, "-m", "tui.cli", "sandbox", "--port", "0", *args], env=_env(runtime),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once it listens
        assert line.startswith("stagewatch sandbox on http://127.0.0.1:"), line
        port = int(line.split()[3].rsplit(":", 1)[1])
        resp = httpx.get(f"http://127.0.0.1:{port}/health", trust_env=False, timeout=WAIT)
        assert resp.status_code == 200
        proc.terminate()
        assert proc.wait(timeout=WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_fault_words_say_the_knobs_the_sandbox_was_given():
    from probes.sandbox import SandboxOptions

    words = SandboxOptions(fault="rolling-restart", rolling_at=8.0, drain_s=3.0, refuse_s=0.5).fault_words()
    assert words.startswith("8 s after start") and "over 3 s" in words and "0.5 s after that window" in words
    idle = SandboxOptions(fault="idle-timeout", idle_after_s=45.0, idle_close_code=1001).fault_words()
    assert "45 s after its accept" in idle and "close frame 1001" in idle
