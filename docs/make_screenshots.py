"""Regenerate the README screenshots from the live app against the embedded sandbox.

    python docs/make_screenshots.py          # all of them
    python docs/make_screenshots.py watch    # only docs/screenshot-watch.svg

Writes docs/screenshot.svg (a passing run) and docs/screenshot-closed-before-ready.svg (the demo fault), each
taken with App.save_screenshot once the run has finished, at 160x45; and docs/screenshot-watch.svg: a watch of a
deploy the sandbox plays (v1, then v2 closing the WebSocket before connection_established, a restart, v2 healthy),
taken once the outage has ended — the history strips, the build lane and the timeline.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from probes.config import load_config, resolve_target
from probes.runner import RunOptions
from probes.sandbox import SandboxOptions, parse_deploy
from tui.app import StagewatchApp

DOCS = Path(__file__).resolve().parent
SIZE = (160, 45)
SHOTS = {"none": "screenshot.svg", "closed-before-ready": "screenshot-closed-before-ready.svg"}
DEPLOY = "0s ok@v1, 2s closed-before-ready@v2, 5s restart, 6.5s ok@v2"
WATCH_S = 0.5  # between rounds: the deploy plays out in about ten seconds


async def run_finished(app: StagewatchApp, pilot: object, why: str, limit: float = 30) -> None:
    """Wait (bounded) until the app's run has finished; SystemExit(`why`) if it does not."""
    deadline = time.monotonic() + limit
    while app.state.finished is None or app.state.running:
        if time.monotonic() > deadline:
            raise SystemExit(why)
        await pilot.pause(0.05)  # type: ignore[attr-defined]


async def shoot(fault: str, filename: str) -> None:
    config = load_config(None)
    app = StagewatchApp(config, resolve_target(config, "sandbox"), RunOptions(fault=fault), None)
    async with app.run_test(size=SIZE) as pilot:
        await run_finished(app, pilot, f"the {fault} run did not finish")
        await pilot.pause(0.3)
        app.save_screenshot(filename, path=str(DOCS))
    print(DOCS / filename)


async def shoot_watch(filename: str = "screenshot-watch.svg") -> None:
    """A deploy watched round by round, shot a few rounds after every probe is UP again."""
    config = load_config(None)
    target = resolve_target(config, "sandbox")
    options = RunOptions(sandbox_options=SandboxOptions(ws_path=target.protocol.ws_path,
                                                        deploy=parse_deploy(DEPLOY)))
    app = StagewatchApp(config, target, options, None, watch=WATCH_S, bell=False)
    async with app.run_test(size=SIZE) as pilot:
        deadline = time.monotonic() + 60
        history = app.state.history
        while True:
            back = [f.round for f in history.flips if f.before == "DOWN" and f.after == "UP"]
            if back and all(history.state(p) == "UP" for p in app.state.order) and \
                    history.total_rounds >= max(back) + 3 and not app.state.running:
                break
            if time.monotonic() > deadline:
                raise SystemExit("the deploy's outage did not end in time")
            await pilot.pause(0.05)
        app.action_watch()  # stop: the header says so, and nothing moves while the shot is taken
        await pilot.pause(0.5)
        app.save_screenshot(filename, path=str(DOCS))
    print(DOCS / filename)


async def shoot_console(filename: str = "screenshot-console.svg") -> None:
    """The console on the sandbox: a message composed and sent, its five agent events, a ping."""
    config = load_config(None)
    app = StagewatchApp(config, resolve_target(config, "sandbox"), RunOptions(), None, console=True)
    async with app.run_test(size=SIZE) as pilot:
        deadline = time.monotonic() + 30

        async def until(check) -> None:  # type: ignore[no-untyped-def]
            while not check():
                if time.monotonic() > deadline:
                    raise SystemExit("the console did not get there in time")
                await pilot.pause(0.05)

        await until(lambda: "console" in app.state.probes and app.state.probes["console"].stages.get("handshake")
                    is not None and app.state.probes["console"].stages["handshake"].status == "pass")
        await pilot.press("ctrl+s")
        await until(lambda: (app.state.frames.get("console") is not None
                             and app.state.frames["console"].frames >= 7))
        await pilot.press("ctrl+g")
        await until(lambda: "ping" in app.state.probes["console"].stages
                    and app.state.probes["console"].stages["ping"].status == "pass")
        await pilot.pause(0.5)
        app.save_screenshot(filename, path=str(DOCS))
    print(DOCS / filename)


async def shoot_keys(filename: str, options: RunOptions, size: tuple[int, int], *keys: str) -> None:
    """The live app against the sandbox: once the run has finished, press `keys`, then the picture."""
    config = load_config(None)
    app = StagewatchApp(config, resolve_target(config, "sandbox"), options, None)
    async with app.run_test(size=size) as pilot:
        await run_finished(app, pilot, f"the run for {filename} did not finish", 30)
        await pilot.press(*keys)
        await pilot.pause(0.5)
        app.save_screenshot(filename, path=str(DOCS))
    print(DOCS / filename)


async def shoot_stage(filename: str = "screenshot-stage.svg") -> None:
    """strip-auth at 120×35, the Stages pane picked with `s`: the connect stage's whole evidence in the Frame pane."""
    await shoot_keys(filename, RunOptions(fault="strip-auth", only=("golden-path",)), (120, 35), "s")


async def shoot_waterfall(filename: str = "screenshot-waterfall.svg") -> None:
    """A healthy golden path, `v`: its stages on one time axis, connect split into DNS / TCP / upgrade."""
    await shoot_keys(filename, RunOptions(only=("golden-path",)), SIZE, "v")


async def shoot_small(filename: str = "screenshot-80x24.svg") -> None:
    """closed-before-ready at 80×24: the compact queue with the diagnosis codes, shift+tab to the Diagnosis pane."""
    await shoot_keys(filename, RunOptions(fault="closed-before-ready"), (80, 24), "shift+tab")


HOLD = """
default_target: sandbox
targets:
  sandbox: {base_url: sandbox}
probes:
  - id: held
    name: 30 chats held through a rolling restart
    priority: 1
    steps: [{step: hold, name: hold, sessions: 30, for: 6s, heartbeat: 500ms, stagger: 1s, message_every: 2s,
             reconnect: true}]
"""


async def shoot_sessions(filename: str = "screenshot-sessions.svg") -> None:
    """A hold of 30 sessions through the sandbox's rolling restart, shot once it is over."""
    from probes.config import parse_config

    config = parse_config(HOLD, "hold.yaml")
    sandbox = SandboxOptions(fault="rolling-restart", rolling_at=2.0, drain_s=1.0, refuse_s=0.8)
    app = StagewatchApp(config, resolve_target(config, "sandbox"), RunOptions(sandbox_options=sandbox), None)
    async with app.run_test(size=SIZE) as pilot:
        await run_finished(app, pilot, "the hold did not finish", 40)
        await pilot.pause(0.8)
        app.query_one("#sessions-table").focus()
        await pilot.press(*["down"] * 9)  # session 10: dropped without a close frame
        await pilot.pause(0.5)
        app.save_screenshot(filename, path=str(DOCS))
    print(DOCS / filename)


if __name__ == "__main__":
    wanted = set(sys.argv[1:]) or {"none", "closed-before-ready", "watch", "console", "sessions", "stage",
                                     "waterfall", "small"}
    if "small" in wanted:
        asyncio.run(shoot_small())
    if "sessions" in wanted:
        asyncio.run(shoot_sessions())
    if "stage" in wanted:
        asyncio.run(shoot_stage())
    if "waterfall" in wanted:
        asyncio.run(shoot_waterfall())
    if "console" in wanted:
        asyncio.run(shoot_console())
    for fault_name, name in SHOTS.items():
        if fault_name in wanted:
            asyncio.run(shoot(fault_name, name))
    if "watch" in wanted:
        asyncio.run(shoot_watch())
