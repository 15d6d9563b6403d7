"""The command line as a user runs it: a standalone sandbox in one process, `stagewatch run --url` in another;
exit codes, the stage lines, the JSON report, and usage errors without tracebacks."""

from __future__ import annotations

import json
import re
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

STAGEWATCH = [sys.executable, "-m", "tui.cli"]
ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JWT_SECRET_KEY", "STAGEWATCH_CONFIG", "NO_COLOR")}
    env.update(extra)
    return env


def _stagewatch(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run([*STAGEWATCH, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=env or _env(PYTHONPATH=str(ROOT)))


@pytest.fixture
def standalone_sandbox(request, tmp_path):
    """`stagewatch sandbox --fault F --port P` as a real process; yields its base URL."""
    procs = []

    def start(fault: str = "none") -> str:
        port = _free_port()
        proc = subprocess.Popen([*STAGEWATCH, "sandbox", "--fault", fault, "--port", str(port)], cwd=tmp_path,
                                env=_env(PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the banner is printed once it listens
        assert line.startswith("stagewatch sandbox on"), line
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def test_run_against_the_embedded_sandbox_passes(tmp_path):
    start = time.monotonic()
    proc = _stagewatch("run", "--no-record", "--json", "r.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert time.monotonic() - start < 10
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("stagewatch → sandbox")
    assert any(line.startswith("P1 golden-path    handshake    pass") for line in lines)
    assert lines[-1].startswith("verdict: PASS — 6/6 probes passed")
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["verdict"] == "pass" and len(report["probes"]) == 6


@pytest.mark.parametrize("fault,stage,shown,code", [
    ("closed-before-ready", "handshake", "1000 Normal Closure", "closed-before-ready"),
    ("auth-rejected", "connect", "HTTP 403 Forbidden", "auth-rejected"),
    ("server-error", "agent", "1011 Internal Error", "server-error"),
    ("version-mismatch", "health", "2026.10.02-stale", "version-mismatch"),
    ("strip-auth", "connect", "HTTP 401", "auth-header-stripped"),
])
def test_run_url_against_a_standalone_sandbox_fails_at_the_fault(standalone_sandbox, tmp_path, fault, stage,
                                                                 shown, code):
    url = standalone_sandbox(fault)
    proc = _stagewatch("run", "--url", url, "--only", "golden-path", "--no-record", "--json", "r.json",
                       "--junit", "r.xml", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    fail_line = next(line for line in proc.stdout.splitlines() if " FAIL " in line)
    assert fail_line.startswith(f"P1 golden-path    {stage:<12} FAIL") and shown in fail_line
    assert f"diagnosis    {code}:" in proc.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    golden = report["probes"][0]
    failed = next(s for s in golden["stages"] if s["status"] == "fail")
    assert failed["name"] == stage and shown in failed["detail"]
    assert golden["diagnoses"][0]["code"] == code
    assert f'type="{code}"' in (tmp_path / "r.xml").read_text()


def test_standalone_sandbox_healthy_passes_with_jwt_secret_from_env(tmp_path):
    port = _free_port()
    env = _env(PYTHONPATH=str(ROOT), JWT_SECRET_KEY="a-test-secret-that-is-long-enough-32b")
    server = subprocess.Popen([*STAGEWATCH, "sandbox", "--port", str(port)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and "stagewatch sandbox on" in server.stdout.readline()
        proc = _stagewatch("run", "--url", f"http://127.0.0.1:{port}", "--no-record", cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "minted HS256 with $JWT_SECRET_KEY" in proc.stdout
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_wrong_secret_is_auth_rejected(standalone_sandbox, tmp_path):
    url = standalone_sandbox()
    proc = _stagewatch("run", "--url", url, "--only", "golden-path", "--no-record", cwd=tmp_path,
                       env=_env(PYTHONPATH=str(ROOT), JWT_SECRET_KEY="not-the-sandbox-secret-at-all-xx"))
    assert proc.returncode == 1
    assert "diagnosis    auth-rejected:" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["run", "--target", "nope"], "no target named 'nope'"),
    (["run", "--only", "nope"], "--only: no probe named 'nope'"),
    (["run", "--url", "ftp://x"], "is not a valid URL"),
    (["run", "--target", "staging"], "STAGING_BASE_URL is not set"),
    (["run", "--url", "https://api.example.com"], "looks like production"),
    (["run", "--url", "http://127.0.0.1:1", "--fault", "garbage"], "--fault applies to the embedded sandbox"),
    (["run", "--url", "https://www.latest-news.com"], "looks like production"),  # 'test' inside a word
    (["run", "--url", "https://localhost.evil.com"], "looks like production"),
    (["run", "--bogus"], "No such option '--bogus'"),  # Click's own usage errors, one line too
    (["run", "--max-priority", "12"], "12 is not in the range"),
])
def test_usage_errors_exit_2_with_one_line(tmp_path, args, message):
    proc = _stagewatch(*args, "--no-record", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_watch_repeats_rounds_and_counts_each(tmp_path):
    proc = _stagewatch("run", "--no-record", "--watch", "0.1", "--count", "3", "--max-priority", "0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rounds = [line for line in proc.stdout.splitlines() if re.search(r"  #\d+ ", line)]
    assert len(rounds) == 3 and all(re.search(r"#\d+ +2026\.11\.25-sandbox +✓  PASS", r) for r in rounds), rounds
    assert "verdict:" not in proc.stdout  # a line per round, not per stage (that is -v)
    verbose = _stagewatch("run", "--no-record", "--watch", "0.1", "--count", "2", "--max-priority", "0", "-v",
                          cwd=tmp_path)
    assert verbose.stdout.count("verdict: PASS") == 2 and len(re.findall(r"  #\d+ ", verbose.stdout)) == 2


def test_missing_signing_secret_is_a_config_error(tmp_path):
    port = _free_port()  # nothing listens: the check happens before anything is sent
    out = _stagewatch("run", "--url", f"http://127.0.0.1:{port}", "--no-record", cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == (f"stagewatch: error: target 'http://127.0.0.1:{port}': environment variable JWT_SECRET_KEY "
                          "is not set or empty (the JWT signing secret); export it, or set auth.mode in the config\n")
    health_only = _stagewatch("run", "--url", f"http://127.0.0.1:{port}", "--no-record", "--only", "health",
                              cwd=tmp_path)
    assert health_only.returncode == 1  # health needs no token: it runs (and finds nothing listening)
    assert "dns-or-refused" in health_only.stdout


def test_non_production_patterns_match_whole_host_words():
    from probes.safety import looks_like_production

    patterns = ["staging", "localhost", "127.0.0.1", "[::1]", "::1", "dev", "test", "sandbox"]
    for host in ("api.staging.netrasystems.ai", "staging-api.example.com", "localhost", "127.0.0.1", "::1",
                 "api.dev.example.com"):
        assert not looks_like_production(host, patterns), host
    for host in ("api.example.com", "www.latest-news.com", "api.devices.com", "prod.contest.io",
                 "localhost.evil.com", "127.0.0.3", "127.0.0.1.evil.com"):
        assert looks_like_production(host, patterns), host
    assert not looks_like_production("api.pre-prod.example.com", ["pre-prod"])  # patterns with a dash or dot
    assert not looks_like_production("ws.staging.example.com", ["staging.example.com"])
    assert looks_like_production("xstaging.example.com", ["staging.example.com"])


@pytest.mark.parametrize("signame,code", [("SIGINT", 130), ("SIGTERM", 143), ("SIGHUP", 129)])
def test_interrupted_run_exits_130_and_still_writes_its_reports(tmp_path, signame, code):
    """Ctrl-C, SIGTERM (CI runners, `timeout`) and SIGHUP (a closed terminal) all end the run with its reports
    written, the recording flushed and the writer process reaped."""
    import signal

    import psutil

    proc = subprocess.Popen([*STAGEWATCH, "run", "--fault", "slow-agent", "--json", "r.json", "--junit", "r.xml",
                             "--markdown", "r.md", "--record", "r.jsonl"], cwd=tmp_path, env=_env(PYTHONPATH=str(ROOT)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until the golden path is in its (35 s) agent stage
        if "golden-path" in line and "message" in line:
            break
    time.sleep(0.3)
    writers = [c for c in psutil.Process(proc.pid).children(recursive=True) if "probes.recwriter" in " ".join(c.cmdline())]
    proc.send_signal(getattr(signal, signame))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    assert writers and not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in writers)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["verdict"] == "interrupted"
    statuses = {p["id"]: p["status"] for p in report["probes"]}
    # the probe that was running ended in error at its stage; the ones the interrupt kept from running: skip
    assert statuses == {"health": "pass", "golden-path": "error", "auth-required": "skip", "event-order": "skip",
                        "message-flow": "skip", "reconnect": "skip"}, statuses
    golden = next(p for p in report["probes"] if p["id"] == "golden-path")
    assert {"name": "agent", "status": "error", "detail": "interrupted"}.items() <= golden["stages"][5].items()
    junit = (tmp_path / "r.xml").read_text()
    assert 'errors="1"' in junit and 'skipped="4"' in junit and "not run: the run was interrupted" in junit
    assert "INTERRUPTED" in (tmp_path / "r.md").read_text()
    assert err.count("stagewatch: recording: r.jsonl") == 1
    assert '"verdict": "interrupted"' in (tmp_path / "r.jsonl").read_text()


def test_fail_fast_verdict_counts_failed_and_not_run_apart(tmp_path):
    out = _stagewatch("run", "--fault", "not-ready", "--fail-fast", "--no-record", cwd=tmp_path)
    assert out.returncode == 1
    assert "1 of 6 probes failed (health at health), 5 not run (--fail-fast)" in out.stdout


@pytest.mark.parametrize("args,message", [
    (["--only", "no-such-probe", "--fault", "slow-agent"], "No such option '--only'"),
    (["--fault", "slow-agent"], "No such option '--fault'"),
    (["--fail-fast"], "No such option '--fail-fast'"),
    (["--max-priority", "1"], "No such option '--max-priority'"),
    (["--expect-version", "b1"], "No such option '--expect-version'"),
])
def test_repro_refuses_options_it_cannot_honour(tmp_path, args, message):
    """repro prints the target's golden path: a queue option would be silently ignored, so it is refused (exit 2)."""
    proc = _stagewatch("repro", "--url", "http://127.0.0.1:8765", *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stdout == ""
