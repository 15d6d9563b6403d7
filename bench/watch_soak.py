"""Watch soak: one long `stagewatch run --watch` (the headless watch loop itself) at a short interval, against one
in-process sandbox whose fault and build switch every few seconds as a rolling deploy would, recording to a
rotating recording. Prints RSS growth after warm-up and recording bytes per round.

    python bench/watch_soak.py [--minutes 10] [--interval 0.05] [--switch 5] [--max-file-mb 5]

Warm-up: the first `--warmup` seconds (default 60) are not counted: imports, caches, the allocator's high-water
mark and the watch history's bounded buffers (the last `keep_rounds` rounds kept whole, then summaries) fill
there. Growth after that is what a day of watching would show. The last line is machine-readable:

    rounds=N rss_start_mb=A rss_end_mb=B growth_pct=G bytes_per_round=R parts=P flips=F

Target: growth under 10 % after warm-up.
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

from probes.config import Timeouts, load_config, resolve_target
from probes.headless import HeadlessRequest, _run
from probes.model import RunModel
from probes.runner import RunOptions
from probes.sandbox import Sandbox, SandboxOptions
from probes.sandbox.deploy import parse_deploy

MB = 1024 * 1024
SOAK_TIMEOUTS = Timeouts(http=2.0, connect=2.0, ready=0.5, agent=1.0, response=0.5, close=0.5)
# A deploy's faces: healthy, a bad build closing before ready, a restart refusing the handshake, back healthy.
PHASES = [("none", "v1"), ("closed-before-ready", "v2"), ("not-ready", "v2"), ("none", "v2"),
          ("server-error", "v3"), ("none", "v3")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="How long to watch (default 10).")
    parser.add_argument("--interval", type=float, default=0.05, help="Seconds between rounds (default 0.05).")
    parser.add_argument("--switch", type=float, default=5.0, help="Seconds between deploy phases (default 5).")
    parser.add_argument("--warmup", type=float, default=60.0, help="Seconds of warm-up not counted (default 60).")
    parser.add_argument("--max-file-mb", type=float, default=5.0, help="Recording part size (default 5 MB).")
    return parser.parse_args(argv)


def rss_mb(proc: psutil.Process) -> float:
    gc.collect()
    rss: int = proc.memory_info().rss
    return rss / MB


def deploy_script(minutes: float, every: float) -> str:
    """The phases, one every `every` seconds, for the whole soak (the sandbox plays it: no build is expected)."""
    steps = int(minutes * 60 / every) + 2
    return ", ".join(f"{i * every:g}s {PHASES[i % len(PHASES)][0].replace('none', 'ok')}@"
                     f"{PHASES[i % len(PHASES)][1]}" for i in range(steps))


async def soak(args: argparse.Namespace) -> int:
    config = load_config(None).model_copy(update={"timeouts": SOAK_TIMEOUTS})
    target = resolve_target(config, "sandbox")
    proc = psutil.Process()
    sandbox = await Sandbox(SandboxOptions(deploy=parse_deploy(deploy_script(args.minutes, args.switch)))).start()
    summary = RunModel()
    summary.history.configure(confirm=config.watch.confirm, keep_rounds=config.watch.keep_rounds)
    samples: list[tuple[float, int, float]] = []
    with tempfile.TemporaryDirectory(prefix="stagewatch-watch-soak-") as tmp:
        rec = Path(tmp) / "watch.jsonl"
        req = HeadlessRequest(config, target, RunOptions(sandbox=sandbox, expected_version=None), record_path=rec,
                              quiet=True, watch=args.interval, for_s=args.minutes * 60, bell=False,
                              record_max_bytes=int(args.max_file_mb * MB))
        started = time.monotonic()

        async def sample() -> None:
            while True:
                await asyncio.sleep(10)
                samples.append((time.monotonic() - started, summary.history.total_rounds, rss_mb(proc)))
                print(f"  {samples[-1][0]:5.0f} s  {samples[-1][1]:6d} rounds  rss {samples[-1][2]:.1f} MB",
                      flush=True)

        sampler = asyncio.create_task(sample())
        try:
            await _run(req, summary, [])
        finally:
            sampler.cancel()
            await sandbox.stop()
        parts = sorted(Path(tmp).glob("watch*.jsonl"))
        total_bytes = sum(p.stat().st_size for p in parts)
    rounds = summary.history.total_rounds
    warm = next((s for s in samples if s[0] >= args.warmup), samples[0] if samples else (0.0, 0, rss_mb(proc)))
    rss_start, rss_end = warm[2], rss_mb(proc)
    growth = (rss_end - rss_start) / rss_start * 100 if rss_start else 0.0
    print(f"{rounds} rounds in {args.minutes:g} min at {args.interval:g} s; {summary.history.failed_rounds} failed; "
          f"{len(summary.history.flips)} flips, {len(summary.history.outages)} outages, "
          f"{len(summary.history.builds)} build spans; rounds kept as summaries: {len(summary.history.rounds)}")
    print(f"rounds={rounds} rss_start_mb={rss_start:.1f} rss_end_mb={rss_end:.1f} growth_pct={growth:.1f} "
          f"bytes_per_round={total_bytes / max(rounds, 1):.0f} parts={len(parts)} flips={len(summary.history.flips)}",
          flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(soak(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
