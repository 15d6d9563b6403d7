"""Flood benchmark: can the app keep up with a WebSocket that sends as fast as the wire allows?

    python bench/flood.py [--frames N] [--record] [--profile]

Starts the sandbox in a subprocess (`stagewatch sandbox --fault flood --flood N`, so the server has its own
core), then in this process:

1. the raw `websockets` client: connect with a token (subprotocol `jwt.<base64url>`), send one message, read
   the N filler frames and the agent events; frames/s from the send to `agent_completed`;
2. the app, headless (`App.run_test`), running the real engine's golden-path probe against the same sandbox;
   frames/s from the `agent` stage's own timing (the frames it consumed / its duration), while a 10 ms timer in
   the app's event loop records how late it fires (lag) and samples the peak RSS.

Prints both rates, their ratio, peak RSS and loop lag, and ends with exactly one line:

    ratio=R frames=N rss_mb=M lag_p95_ms=L

Targets: ratio >= 0.8 at 1M frames, RSS < 150 MB, lag p95 < 100 ms. `--record` also records the session to a
temporary JSON Lines file, as the app does by default. `--profile` profiles the engine thread (where every
frame is handled) during the app run and prints the top functions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jwt
import psutil
from websockets.asyncio.client import connect

from probes.auth import b64url
from probes.config import Timeouts, load_config, resolve_target
from probes.events import StageFinished
from probes.handoff import read_handoff
from probes.runner import RunOptions

MB = 1024 * 1024
FINAL = "agent_completed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sandbox(frames: int, port: int) -> subprocess.Popen[str]:
    exe = Path(sys.executable).with_name("stagewatch")
    cmd = [str(exe), "sandbox", "--fault", "flood", "--flood", str(frames), "--port", str(port)] if exe.exists() \
        else [sys.executable, "-m", "tui.cli", "sandbox", "--fault", "flood", "--flood", str(frames), "--port",
              str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "stagewatch sandbox on http://…" once it listens
    if "sandbox on" not in line:
        proc.kill()
        err = proc.stderr.read() if proc.stderr else ""
        raise SystemExit(f"flood.py: the sandbox did not start: {line.strip()} {err}")
    for _ in range(50):
        if read_handoff(port):
            break
        time.sleep(0.05)
    return proc


async def raw_client(port: int) -> tuple[int, float]:
    """Frames read and seconds from the send to the final agent event, with a plain websockets client."""
    handoff = read_handoff(port)
    if not handoff:
        raise SystemExit("flood.py: no handoff file from the sandbox (its signing key)")
    token = jwt.encode({"sub": "bench"}, handoff["secret"], algorithm="HS256")
    async with connect(f"ws://127.0.0.1:{port}/ws", subprotocols=["jwt." + b64url(token)],  # type: ignore[list-item]
                       max_size=2**20, proxy=None) as ws:
        await ws.recv()  # connection_established
        await ws.send(json.dumps({"type": "user_message", "payload": {"content": "flood me"}}))
        start = time.perf_counter()
        count = 0
        while True:
            message = await ws.recv()
            count += 1
            if isinstance(message, str) and FINAL in message[:40]:
                break
        return count, time.perf_counter() - start


def bench_config() -> object:
    config = load_config(None)
    return config.model_copy(update={"timeouts": Timeouts(http=10, connect=10, ready=10, agent=900, response=10,
                                                            close=5)})


async def engine_only(port: int) -> tuple[int, float]:
    """The engine without any UI (a bus with one counting subscriber): where the app's ceiling is."""
    from probes.bus import EventBus  # noqa: PLC0415
    from probes.runner import run_queue  # noqa: PLC0415

    config = bench_config()
    target = resolve_target(config, url=f"http://127.0.0.1:{port}")  # type: ignore[arg-type]
    bus = EventBus()
    seen: list[StageFinished] = []
    bus.subscribe(lambda e: seen.append(e) if type(e) is StageFinished else None)
    result = await run_queue(config, target, bus, RunOptions(only=("golden-path",)))  # type: ignore[arg-type]
    agent = next(e for e in seen if e.stage == "agent")
    if agent.status != "pass":
        raise SystemExit(f"flood.py: the engine's agent stage did not pass: {agent.detail}")
    return result.probes[0].frames_in, agent.duration_ms / 1000


async def app_run(port: int, record: bool, profile: bool) -> dict[str, float]:
    """The app, headless, probing the flood with the golden path; returns rate, RSS and lag figures."""
    from tui.app import StagewatchApp  # noqa: PLC0415 (after the raw client: its import is not measured there)

    config = bench_config()
    target = resolve_target(config, url=f"http://127.0.0.1:{port}")  # type: ignore[arg-type]
    tmp = tempfile.TemporaryDirectory(prefix="stagewatch-flood-")
    record_path = Path(tmp.name) / "flood.jsonl" if record else None
    app = StagewatchApp(config, target, RunOptions(only=("golden-path",)), record_path)  # type: ignore[arg-type]
    proc = psutil.Process()
    lags: list[float] = []
    rss_peak = proc.memory_info().rss
    flooding = False
    profiler = cProfile.Profile() if profile else None

    async def monitor() -> None:
        """A 10 ms timer in the app's loop: how late it fires is the loop lag; every 10th tick samples RSS (a
        /proc read per tick would itself load the loop it measures)."""
        nonlocal rss_peak
        ticks = 0
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            late = (time.perf_counter() - before - 0.01) * 1000
            if flooding:
                lags.append(late)
                ticks += 1
                if ticks % 10 == 0:
                    rss_peak = max(rss_peak, proc.memory_info().rss)

    agent: StageFinished | None = None
    cpu: dict[str, float] = {}

    def thread_cpu() -> dict[str, float]:
        """CPU seconds so far of the UI thread (this one), the engine thread and the recording's writer process."""
        import threading  # noqa: PLC0415

        ids = {threading.get_native_id(): "ui_cpu_s"}
        ids.update({t.native_id: "engine_cpu_s" for t in threading.enumerate() if t.name == "stagewatch-engine"})
        used = {ids[t.id]: t.user_time + t.system_time for t in proc.threads() if t.id in ids}
        for child in proc.children():
            try:
                if "probes.recwriter" in child.cmdline():
                    times = child.cpu_times()
                    used["writer_cpu_s"] = times.user + times.system
            except psutil.Error:
                pass
        return used

    cpu_start: dict[str, float] = {}
    async with app.run_test(size=(160, 45)) as pilot:
        task = asyncio.create_task(monitor())
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            probe = app.state.probes.get("golden-path")
            stage = probe.stages.get("agent") if probe else None
            if stage is not None and stage.status == "running" and not flooding:
                flooding = True
                cpu_start = thread_cpu()
                if profiler is not None and app.engine is not None:
                    app.engine.call(profiler.enable)
            if app.state.finished is not None and not app.state.running:  # the run's RunFinished arrived
                break
        flooding = False
        cpu = {key: used - cpu_start.get(key, 0.0) for key, used in thread_cpu().items()}
        if profiler is not None and app.engine is not None:
            app.engine.call(profiler.disable)
        task.cancel()
        probe = app.state.probes.get("golden-path")
        if probe is not None and "agent" in probe.stages:
            s = probe.stages["agent"]
            agent = StageFinished(0, "golden-path", "agent", s.status,  # type: ignore[arg-type]
                                  s.duration_ms or 0.0, s.detail)
        frames_shown = app.state.frames["golden-path"].total if "golden-path" in app.state.frames else 0
        verdict = app.state.verdict
        await pilot.pause(0.1)
    tmp.cleanup()
    if agent is None or agent.status != "pass":
        raise SystemExit(f"flood.py: the app's golden-path run did not pass the agent stage ({verdict}): "
                         f"{agent.detail if agent else 'no agent stage'}")
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(20)
        print("--- engine thread profile during the flood (tottime) ---")
        print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:6000])
    lags.sort()
    return {
        "frames": float(frames_shown),
        "seconds": agent.duration_ms / 1000,
        "rss_mb": rss_peak / MB,
        "lag_p95_ms": lags[int(len(lags) * 0.95)] if lags else 0.0,
        "lag_max_ms": lags[-1] if lags else 0.0,
        "lag_median_ms": statistics.median(lags) if lags else 0.0,
        **cpu,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1_000_000, help="Filler frames per message (default 1M).")
    parser.add_argument("--record", action="store_true", help="Also record the app's session to a temp file.")
    parser.add_argument("--profile", action="store_true", help="Profile the engine thread during the app run.")
    parser.add_argument("--repeat", type=int, default=1, help="Run each measurement N times, keep the fastest "
                        "(the machine is shared: the best run is the least disturbed one).")
    args = parser.parse_args(argv)
    port = free_port()
    sandbox = start_sandbox(args.frames, port)
    try:
        raw_frames, raw_s = min((asyncio.run(raw_client(port)) for _ in range(args.repeat)), key=lambda r: r[1])
        raw_rate = raw_frames / raw_s
        print(f"raw websockets client: {raw_frames:,} frames in {raw_s:.2f} s = {raw_rate:,.0f} frames/s", flush=True)
        eng_frames, eng_s = min((asyncio.run(engine_only(port)) for _ in range(args.repeat)), key=lambda r: r[1])
        print(f"engine alone (no UI):  {eng_frames:,} frames in {eng_s:.2f} s = {eng_frames / eng_s:,.0f} frames/s "
              f"({eng_frames / eng_s / raw_rate:.2f} of raw)", flush=True)
        runs = [asyncio.run(app_run(port, args.record, args.profile)) for _ in range(args.repeat)]
        figures = min(runs, key=lambda f: f["seconds"])
        figures["rss_mb"] = max(f["rss_mb"] for f in runs)
        figures["lag_p95_ms"] = max(f["lag_p95_ms"] for f in runs)
    finally:
        sandbox.terminate()
        try:
            sandbox.wait(5)
        except subprocess.TimeoutExpired:
            sandbox.kill()
    app_rate = figures["frames"] / figures["seconds"]
    ratio = app_rate / raw_rate
    print(f"app (headless, real engine{', recording' if args.record else ''}): {int(figures['frames']):,} frames "
          f"in {figures['seconds']:.2f} s = {app_rate:,.0f} frames/s", flush=True)
    print(f"CPU from the flood to the end of the run: UI thread {figures.get('ui_cpu_s', 0):.2f} s, engine thread "
          f"{figures.get('engine_cpu_s', 0):.2f} s (one GIL: UI time is taken from the engine)"
          + (f", recording writer process {figures['writer_cpu_s']:.2f} s" if "writer_cpu_s" in figures else ""),
          flush=True)
    print(f"ratio {ratio:.2f} (target >= 0.8) · peak RSS {figures['rss_mb']:.0f} MB (target < 150) · "
          f"loop lag p95 {figures['lag_p95_ms']:.1f} ms, median {figures['lag_median_ms']:.1f} ms, "
          f"max {figures['lag_max_ms']:.1f} ms (target p95 < 100)", flush=True)
    print(f"ratio={ratio:.2f} frames={args.frames} rss_mb={figures['rss_mb']:.0f} "
          f"lag_p95_ms={figures['lag_p95_ms']:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")
    sys.exit(main())
