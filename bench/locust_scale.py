"""Locust scale benchmark: how many golden-path probes per second one machine drives through `probes.locust` with a
Locust master and N workers against the loopback sandbox.

    python bench/locust_scale.py [--users 200] [--spawn-rate 50] [--time 30] [--workers 2] [--summary PATH]

Starts `stagewatch sandbox` (port 0), a headless master (`--expect-workers N`, bound to 127.0.0.1 on a free port)
and N `--worker` processes, all running examples/locustfile.py; reads the master's stats CSV. Prints probe runs per
second (users/s: one run = one pass through the path), Locust requests per second (a request per stage plus the
close row), failures, and per-stage p50/p95/p99; writes Locust's final summary table to --summary. Ends with
exactly one line:

    runs_per_s=R requests_per_s=Q failures=F workers=N
"""

from __future__ import annotations

import argparse
import csv
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "examples" / "locustfile.py"
SECRET = "locust-bench-key-0123456789abcdef0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--spawn-rate", type=float, default=50)
    ap.add_argument("--time", type=int, default=30, help="run time in seconds")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--summary", default="/tmp/locust_summary.txt", help="where to write Locust's final table")
    args = ap.parse_args()

    env = dict(os.environ, JWT_SECRET_KEY=SECRET, PYTHONUNBUFFERED="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("STAGEWATCH_CONFIG", None)
    work = Path(tempfile.mkdtemp(prefix="locust-scale-"))
    sandbox = subprocess.Popen([sys.executable, "-c", "from tui.cli import entry; entry()", "sandbox", "--port", "0"],
                               cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    procs: list[subprocess.Popen[str]] = []
    try:
        assert sandbox.stdout is not None
        url = sandbox.stdout.readline().split(" on ", 1)[1].split()[0]
        port, prefix = free_port(), work / "scale"
        common = ["-f", str(LOCUSTFILE)]
        for i in range(args.workers):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "locust", *common, "--worker", "--master-host", "127.0.0.1", "--master-port",
                 str(port)], cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=open(work / f"worker{i}.log", "w"),
                text=True))
        started = time.monotonic()
        master = subprocess.run(
            [sys.executable, "-m", "locust", *common, "--master", "--expect-workers", str(args.workers), "--headless",
             "-u", str(args.users), "-r", str(args.spawn_rate), "-t", f"{args.time}s", "--host", url,
             "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port), "--csv", str(prefix),
             "--only-summary"], cwd=work, env=env, capture_output=True, text=True)
        wall = time.monotonic() - started
        for p in procs:
            p.wait(timeout=30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        sandbox.terminate()
        sandbox.wait(timeout=10)

    out = master.stdout + master.stderr
    table = out[out.find("Type     Name"):] if "Type     Name" in out else out
    Path(args.summary).write_text(table)
    with open(f"{prefix}_stats.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    stages = [r for r in rows if r["Type"] in ("HTTP", "WS")]
    total = next(r for r in rows if r["Name"] == "Aggregated")
    runs = next((r for r in rows if r["Name"].endswith("/health")), total)
    failures = int(total["Failure Count"])
    print(f"master + {args.workers} workers, {args.users} users (spawn {args.spawn_rate:g}/s), {args.time} s run "
          f"({wall:.1f} s wall); master exit {master.returncode}; {os.cpu_count()} CPUs")
    print(f"probe runs/s {float(runs['Requests/s']):.1f}   requests/s {float(total['Requests/s']):.1f}   "
          f"failures {failures}")
    print(f"{'stage':<28} {'reqs':>7} {'fails':>6} {'p50':>6} {'p95':>6} {'p99':>6}  (ms)")
    for r in stages:
        print(f"{r['Type'] + ' ' + r['Name']:<28} {r['Request Count']:>7} {r['Failure Count']:>6} {r['50%']:>6} "
              f"{r['95%']:>6} {r['99%']:>6}")
    print(f"summary table: {args.summary}")
    print(f"runs_per_s={float(runs['Requests/s']):.1f} requests_per_s={float(total['Requests/s']):.1f} "
          f"failures={failures} workers={args.workers}")
    return 0 if master.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
