"""probes.locust end to end: headless Locust runs against a loopback sandbox (healthy and with a fault), a master
with two workers, the engine's thread never blocking gevent, and the ImportError without Locust.

Locust monkey-patches the process it is imported in (gevent), so it is never imported here: every run is a
subprocess, and the tests skip when Locust is not installed (found by spec, not by import).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "examples" / "locustfile.py"
SECRET = "locust-test-key-0123456789abcdef0123456789"  # the sandbox's and the probes' HS256 key
STAGES = ("health", "auth", "connect", "handshake", "message", "agent", "response")

needs_locust = pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="locust is not installed")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("STAGEWATCH_CONFIG", None)
    env.update(JWT_SECRET_KEY=SECRET, PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
               PYTHONUNBUFFERED="1", **extra)
    return env


class Sandbox:
    """`stagewatch sandbox` on 127.0.0.1, port 0, in a subprocess; its URL read from its first line."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from tui.cli import entry; entry()", "sandbox", "--port", "0", *args],
            cwd=tmp, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()  # "stagewatch sandbox on http://127.0.0.1:PORT (ws …"
        assert "http://127.0.0.1:" in first, first + self.proc.stdout.read()
        self.url = first.split(" on ", 1)[1].split()[0]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def sandbox(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    sb = Sandbox(tmp_path, *getattr(request, "param", ()))
    yield sb
    sb.stop()


def _locust(*args: str, cwd: Path, timeout: float = 60, env: dict[str, str] | None = None) -> \
        subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "locust", *args], cwd=cwd, env=env or _env(), text=True,
                          capture_output=True, timeout=timeout)


def _stats(prefix: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(f"{prefix}_stats.csv", newline="") as fh:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(fh)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@needs_locust
def test_headless_run_reports_one_row_per_stage(sandbox: Sandbox, tmp_path: Path) -> None:
    prefix = tmp_path / "run"
    done = _locust("-f", str(LOCUSTFILE), "--headless", "-u", "50", "-r", "50", "-t", "4s", "--host", sandbox.url,
                   "--csv", str(prefix), "--only-summary", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _stats(prefix)
    for stage in STAGES:
        kind = "HTTP" if stage in ("health", "auth") else "WS"
        row = rows[(kind, f"golden-path/{stage}")]
        assert int(row["Request Count"]) >= 50, row  # every user ran the probe at least once
        assert row["Failure Count"] == "0", row
    count = int(rows[("HTTP", "golden-path/health")]["Request Count"])
    assert rows[("CLOSE", "golden-path/close 1000")]["Request Count"] == str(count)  # one close per run
    assert float(rows[("WS", "golden-path/agent")]["95%"]) > 0
    assert rows[("", "Aggregated")]["Failure Count"] == "0"


@needs_locust
@pytest.mark.parametrize("sandbox", [("--fault", "closed-before-ready")], indirect=True)
def test_headless_run_against_a_fault_fails_the_handshake(sandbox: Sandbox, tmp_path: Path) -> None:
    prefix = tmp_path / "fault"
    done = _locust("-f", str(LOCUSTFILE), "--headless", "-u", "50", "-r", "50", "-t", "3s", "--host", sandbox.url,
                   "--csv", str(prefix), "--only-summary", cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]  # Locust's exit code when requests failed
    rows = _stats(prefix)
    handshake = rows[("WS", "golden-path/handshake")]
    assert int(handshake["Request Count"]) >= 50
    assert handshake["Failure Count"] == handshake["Request Count"]  # every run fails there
    assert rows[("WS", "golden-path/connect")]["Failure Count"] == "0"
    assert ("WS", "golden-path/agent") not in rows  # skipped stages are not requests
    assert rows[("CLOSE", "golden-path/close 1000")]["Request Count"] == handshake["Request Count"]
    with open(f"{prefix}_failures.csv", newline="") as fh:
        failures = list(csv.DictReader(fh))
    assert len(failures) == 1, failures  # timings in the detail do not split the row
    assert failures[0]["Name"] == "golden-path/handshake"
    assert failures[0]["Error"].startswith("StageFailure("), failures
    assert "closed-before-ready: 1000 Normal Closure" in failures[0]["Error"], failures  # diagnosis, then detail


_REPORTING = """
import json, os
from locust import between, events
from locust.runners import MasterRunner
from probes.locust import StagewatchUser

class GoldenPath(StagewatchUser):
    wait_time = between(0.2, 0.4)

requests = {}

@events.worker_report.add_listener
def _count(client_id, data, **kwargs):
    requests[client_id] = requests.get(client_id, 0) + sum(e["num_requests"] for e in data.get("stats", []))

@events.quitting.add_listener
def _write(environment, **kwargs):
    if isinstance(environment.runner, MasterRunner):
        with open(os.environ["SW_WORKERS_OUT"], "w") as fh:
            json.dump(requests, fh)
"""


@needs_locust
def test_master_with_two_workers(sandbox: Sandbox, tmp_path: Path) -> None:
    locustfile = tmp_path / "locustfile.py"
    locustfile.write_text(textwrap.dedent(_REPORTING))
    out, prefix, port = tmp_path / "workers.json", tmp_path / "dist", _free_port()
    env = _env(SW_WORKERS_OUT=str(out))
    worker_args = ["-f", str(locustfile), "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)]
    logs = [open(tmp_path / f"worker{i}.log", "w") for i in range(2)]  # a file: a full pipe would stall a worker
    workers = [subprocess.Popen([sys.executable, "-m", "locust", *worker_args], cwd=tmp_path, env=env,
                                stdout=log, stderr=subprocess.STDOUT) for log in logs]
    try:
        master = _locust("-f", str(locustfile), "--master", "--expect-workers", "2", "--expect-workers-max-wait",
                         "30", "--headless", "-u", "20", "-r", "20", "-t", "3s", "--host", sandbox.url,
                         "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port), "--csv", str(prefix),
                         "--only-summary", cwd=tmp_path, env=env)
        for w in workers:
            w.wait(timeout=20)  # the master tells its workers to quit
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
        for log in logs:
            log.close()
    assert master.returncode == 0, master.stderr[-3000:]
    assert all(w.returncode == 0 for w in workers), [log.name for log in logs]
    assert "2 workers connected" in master.stderr
    reported = json.loads(out.read_text())
    assert len(reported) == 2 and all(n > 0 for n in reported.values()), reported  # both workers ran probes
    rows = _stats(prefix)
    health = rows[("HTTP", "golden-path/health")]
    assert int(health["Request Count"]) >= 20 and health["Failure Count"] == "0"
    assert rows[("", "Aggregated")]["Failure Count"] == "0"


_TICKER = """
import json, sys, time
from gevent import monkey
monkey.patch_all()
import gevent
from probes.locust import plan, run_once

ticks = 0
def tick():
    global ticks
    while True:
        gevent.sleep(0.01)
        ticks += 1

p = plan(None, None, sys.argv[1], "golden-path")
ticker = gevent.spawn(tick)
gevent.sleep(0.05)
start, before = time.monotonic(), ticks
report = run_once(p)
elapsed, during = time.monotonic() - start, ticks - before
ticker.kill()
print(json.dumps({"status": report.status, "elapsed": elapsed, "ticks": during,
                  "stages": {s.name: [s.status, s.duration_ms] for s in report.stages}}))
"""


@needs_locust
@pytest.mark.parametrize("sandbox", [("--fault", "slow-agent", "--delay", "0.3")], indirect=True)
def test_a_waiting_probe_does_not_block_other_greenlets(sandbox: Sandbox, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", _TICKER, sandbox.url], cwd=tmp_path, env=_env(), text=True,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == "pass", result
    assert result["stages"]["agent"][1] >= 1000, result  # the probe really waited on a slow stage…
    expected = result["elapsed"] / 0.01  # a blocked hub ticks 0 times; a busy CI machine ticks less often
    assert result["ticks"] >= 0.25 * expected, result  # …while the other greenlet kept running


def test_import_without_locust_says_how_to_install(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import sys
        sys.modules["locust"] = None  # as if not installed
        try:
            import probes.locust
        except ImportError as exc:
            print(exc)
        else:
            print("imported")
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), text=True, capture_output=True,
                          timeout=30)
    assert "pip install 'stagewatch[locust]'" in done.stdout, done.stdout + done.stderr
