"""Soak test: run the probe queue in a loop against the in-process sandbox, cycling faults, and watch memory.

    python bench/soak.py [--minutes N] [--faults a,b,c] [--flood N]

Every run is a full headless session (event bus, report summary and a JSON Lines recorder into a temporary
directory, deleted after each run). The first passes over the fault list (--warmup, default 3) are a warm-up:
imports, caches and the allocator's high-water mark (the huge-frame fault alone allocates tens of MB that the C
allocator keeps) settle there, and the baseline RSS is taken after them. Live Python objects are counted at the
baseline and at the end too: a leak grows them, allocator noise does not. The last line is machine-readable:

    runs=R rss_start_mb=A rss_end_mb=B growth_pct=G

Target: growth under 10 % over 10 minutes. Slow faults (slow-agent, silent, empty-response) are bounded by the
short timeouts of the soak config below, not by the sandbox's delays.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
from pathlib import Path

import psutil

from probes.bus import EventBus
from probes.config import Config, ResolvedTarget, Timeouts, load_config, resolve_target
from probes.recording import Recorder
from probes.model import RunModel
from probes.report import write_json
from probes.clock import Clock
from probes.runner import RunOptions, run_queue
from probes.sandbox import FAULTS, SandboxOptions

DEFAULT_FAULTS = ",".join(f for f in FAULTS)
SOAK_TIMEOUTS = Timeouts(http=2.0, connect=2.0, ready=0.5, agent=1.0, response=0.5, close=0.5)
MB = 1024 * 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="How long to soak (default 10).")
    parser.add_argument("--faults", default=DEFAULT_FAULTS, help="Comma-separated faults to cycle (default all).")
    parser.add_argument("--flood", type=int, default=5000, help="Frames per message for the flood fault.")
    parser.add_argument("--warmup", type=int, default=3, help="Warm-up passes over the faults (default 3).")
    args = parser.parse_args(argv)
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = [f for f in faults if f not in FAULTS]
    if not faults or unknown:
        parser.error(f"unknown fault {unknown[0]!r} (faults: {', '.join(FAULTS)})" if unknown else "no faults")
    args.fault_list = faults
    return args


def soak_config() -> tuple[Config, ResolvedTarget]:
    """The packaged config with short timeouts, so slow faults cost about a second each."""
    config = load_config(None).model_copy(update={"timeouts": SOAK_TIMEOUTS})
    return config, resolve_target(config, "sandbox")


def rss_mb(proc: psutil.Process) -> float:
    gc.collect()
    rss: int = proc.memory_info().rss
    return rss / MB


async def one_run(config: Config, target: ResolvedTarget, fault: str, flood: int, workdir: Path) -> str:
    """One headless-style session (summary, recorder, JSON report) with `fault` on; returns the verdict."""
    bus = EventBus()
    clock = Clock()
    summary = RunModel()  # the fold `stagewatch run` reports from
    bus.subscribe(summary.apply)
    path = workdir / f"soak-{fault}.jsonl"
    recorder = Recorder(path, wall0=clock.wall, notify=bus.publish, offload=True)  # as the app and `run` record
    bus.subscribe(recorder.handle)
    await recorder.start()
    options = RunOptions(fault=fault, sandbox_options=SandboxOptions(fault=fault, flood=flood, delay=5.0))
    try:
        result = await run_queue(config, target, bus, options, clock)
    finally:
        recorder.close()
        path.unlink(missing_ok=True)
    write_json(summary)  # exercise the report path too
    return result.verdict


async def soak(args: argparse.Namespace) -> int:
    config, target = soak_config()
    proc = psutil.Process()
    faults: list[str] = args.fault_list
    with tempfile.TemporaryDirectory(prefix="stagewatch-soak-") as tmp:
        workdir = Path(tmp)
        rss_cold = rss_mb(proc)
        for fault in faults * args.warmup:  # warm-up passes, not counted
            await one_run(config, target, fault, args.flood, workdir)
        rss_start = rss_mb(proc)
        objects_start = len(gc.get_objects())
        print(f"rss cold {rss_cold:.1f} MB, after warm-up ({len(faults) * args.warmup} runs) {rss_start:.1f} MB, "
              f"{objects_start} live objects", flush=True)
        deadline = time.monotonic() + args.minutes * 60
        runs = 0
        verdicts: dict[str, int] = {}
        while time.monotonic() < deadline:
            fault = faults[runs % len(faults)]
            verdict = await one_run(config, target, fault, args.flood, workdir)
            verdicts[verdict] = verdicts.get(verdict, 0) + 1
            runs += 1
            if runs % (len(faults) * 5) == 0:
                print(f"  {runs} runs, rss {rss_mb(proc):.1f} MB", flush=True)
        rss_end = rss_mb(proc)
        objects_end = len(gc.get_objects())
    growth = (rss_end - rss_start) / rss_start * 100 if rss_start else 0.0
    print(f"verdicts: {verdicts}; live objects {objects_start} -> {objects_end}", flush=True)
    print(f"runs={runs} rss_start_mb={rss_start:.1f} rss_end_mb={rss_end:.1f} growth_pct={growth:.1f}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(soak(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
