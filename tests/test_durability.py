"""Nothing lost: a recording survives `kill -9` in the middle of a frame flood (at most the last ~100 ms gone, a
truncated last line tolerated), and a recording that cannot be written is one warning line while the live run
goes on with the exit code its probes earned.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from probes.events import Frame, Notice, ProbeFinished, RunStarted, StageFinished
from probes.recording import FLUSH_INTERVAL, Recorder, read_recording

STAGEWATCH = str(Path(sys.executable).with_name("stagewatch"))
SECRET = "durability-test-secret-0123456789"
SLACK = 0.5  # scheduling slack on a shared 2-core machine, on top of the 100 ms flush interval


def wait_for(condition: object, timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll `condition()` until true (a file growing has no event to await); fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def flood_sandbox(tmp_path: Path) -> Iterator[str]:
    """A standalone `stagewatch sandbox --fault flood` with millions of frames per message; yields its URL."""
    proc = subprocess.Popen([STAGEWATCH, "sandbox", "--port", "0", "--fault", "flood", "--flood", "5000000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "JWT_SECRET_KEY": SECRET})
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        match = re.search(r"on (http://127\.0\.0\.1:\d+)", first)
        assert match, first + (proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        yield match.group(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_recording_survives_kill_9_mid_flood(flood_sandbox: str, tmp_path: Path) -> None:
    record = tmp_path / "session.jsonl"
    victim = subprocess.Popen(
        [STAGEWATCH, "run", "--url", flood_sandbox, "--only", "golden-path", "--record", str(record), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "JWT_SECRET_KEY": SECRET})
    try:
        # well into the flood: thousands of frames on disk, and the file still growing
        wait_for(lambda: record.exists() and record.stat().st_size > 4_000_000, 30, "the flood to be recorded")
        assert victim.poll() is None, "the run ended before the kill"
        killed_at = time.time()
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(5)
    assert victim.returncode == -signal.SIGKILL
    assert stat.S_IMODE(record.stat().st_mode) == 0o600

    replay = read_recording(record)  # a cut last line is tolerated, not an error
    frames = [e for e in replay.events if isinstance(e, Frame)]
    assert len(frames) > 10_000
    assert replay.skipped == 0
    assert any(isinstance(e, StageFinished) and e.stage == "message" for e in replay.events)
    assert not any(isinstance(e, ProbeFinished) for e in replay.events)  # it really died mid-run
    assert replay.wall0 is not None
    last_wall = replay.wall0 + replay.events[-1].t
    lost = killed_at - last_wall
    print(f"{len(frames)} frames recorded; last event {lost * 1000:.0f} ms before the kill")
    assert lost < FLUSH_INTERVAL + SLACK, f"the last recorded event is {lost * 1000:.0f} ms older than the kill"


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STAGEWATCH, "run", *args], check=False, capture_output=True, text=True, timeout=60,
                          cwd=cwd, env={**os.environ, "NO_COLOR": "1"})


def _assert_one_warning(proc: subprocess.CompletedProcess[str], expected: str) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr  # the probes passed: the lost recording does not count
    assert "verdict: PASS" in proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("stagewatch: warning: " + expected), lines[0]
    assert lines[0].endswith("recording stopped, the run goes on")


def test_unwritable_record_path_is_one_warning_and_the_run_passes(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    proc = _run(["--record", str(blocker / "session.jsonl")], tmp_path)
    _assert_one_warning(proc, f"cannot record to {blocker / 'session.jsonl'}: ")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write into a 0500 directory")
def test_read_only_directory_is_one_warning_and_the_run_passes(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        proc = _run(["--record", str(locked / "session.jsonl")], tmp_path)
    finally:
        locked.chmod(0o700)
    _assert_one_warning(proc, f"cannot record to {locked / 'session.jsonl'}: Permission denied")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
def test_disk_full_is_one_warning_and_the_run_passes(tmp_path: Path) -> None:
    mode_before = os.stat("/dev/full").st_mode
    proc = _run(["--record", "/dev/full"], tmp_path)
    _assert_one_warning(proc, "cannot write recording /dev/full: No space left on device")
    assert os.stat("/dev/full").st_mode == mode_before  # the recorder never chmods a device


@pytest.mark.parametrize("offload", [False, True], ids=["inline", "writer-process"])
async def test_recorder_hands_a_trickle_to_the_os_within_the_flush_interval(tmp_path: Path, offload: bool) -> None:
    path = tmp_path / "r.jsonl"
    recorder = Recorder(path, wall0=1000.0, offload=offload)
    await recorder.start()
    try:
        recorder.handle(RunStarted(0.0, "t", "http://x", (), 1000.0))  # not a boundary: stays buffered
        recorder.handle(Frame(0.01, "p", "in", 1.0, 2, "{}"))
        assert path.stat().st_size == 0
        start = time.monotonic()
        while path.stat().st_size == 0 and time.monotonic() - start < 2:
            await asyncio.sleep(0.01)
        assert time.monotonic() - start < FLUSH_INTERVAL + SLACK
        assert len(read_recording(path).events) == 2
    finally:
        recorder.close()


@pytest.mark.parametrize("offload", [False, True], ids=["inline", "writer-process"])
def test_recorder_write_error_stops_recording_with_one_notice(tmp_path: Path, offload: bool) -> None:
    notices: list[Notice] = []
    blocker = tmp_path / "file"
    blocker.write_text("")
    target = Path("/dev/full") if os.path.exists("/dev/full") else blocker / "r.jsonl"
    recorder = Recorder(target, notify=notices.append, offload=offload)  # type: ignore[arg-type]
    for i in range(5):
        recorder.handle(StageFinished(float(i), "p", f"s{i}", "pass", 1.0, "ok"))
        recorder.handle(Frame(float(i), "p", "in", 1.0, 2, "{}"))
    recorder.close()
    assert len(notices) == 1 and notices[0].level == "warning"
    assert not recorder.active and recorder.error is not None


def test_writer_process_records_exactly_what_inline_recording_does(tmp_path: Path) -> None:
    """The offloaded recorder (a child formats and writes) and the inline one write the same events, in order:
    text frames (the child's path) among binary frames, odd text and ordinary events (the parent's)."""
    events = [RunStarted(0.0, "t", "http://x", (("p", "p", 0),), 1000.0)]
    events += [Frame(0.001 * i, "p", "in", 2.5 * i, 9, f'{{"n":{i}}} é \ud800 "q"\u2028', i % 7 == 0)
               for i in range(20_000)]
    events += [Frame(30.0, "p", "in", 1.0, 3, b"\x00\xff\x80"), StageFinished(31.0, "p", "s", "pass", 1.0, "ok"),
               Frame(32.0, "p", "out", 5.0, 2, "{}"), Notice(33.0, "info", "done")]
    recorded = []
    for offload in (False, True):
        path = tmp_path / f"{offload}.jsonl"
        recorder = Recorder(path, wall0=1000.0, offload=offload)
        assert (recorder._writer is not None) is offload
        for event in events:
            recorder.handle(event)
        recorder.close()
        assert recorder.error is None and stat.S_IMODE(path.stat().st_mode) == 0o600
        replay = read_recording(path)
        assert replay.skipped == 0 and not replay.truncated
        recorded.append(replay.events)
    assert recorded[0] == recorded[1] == events
