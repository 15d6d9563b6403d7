"""`stagewatch follow`: a recording read while a real Recorder writes it — events arrive live, a late joiner gets
everything from the start, rotation is followed into the next part, a line still being written waits for its end,
and the follow ends when the recorder closes the recording. Plus `follow --print` as a user runs it.

No fixed sleeps: every wait is on a condition, with a deadline. Loopback only (the embedded sandbox)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from probes.bus import EventBus
from probes.clock import Clock
from probes.config import resolve_target
from probes.events import Notice, RunFinished, RunStarted
from probes.follow import FollowError, Tail, follow, follow_batches, has_ended, latest_recording
from probes.headless import Printer
from probes.recording import Recorder, end_line, header_line, read_recording
from probes.rotation import part_path, recording_parts
from probes.runner import RunOptions, run_queue
from tests.test_rotation import WALL0, _round  # one round of a watch, as recorded
from tui.follower import Follower

CAP = 4096  # the smallest cap rotation allows: a round of 40 frames (about 8 KB) rotates every round
ROOT = Path(__file__).resolve().parent.parent
FOLLOW = [sys.executable, "-m", "tui.cli", "follow"]  # `stagewatch follow`
POLL = 0.02


def _unclosed(path: Path, events: list[Any]) -> None:
    """A recording as a recorder leaves it when it dies without closing it (kill -9): no end line."""
    recorder = Recorder(path, wall0=WALL0)
    for event in events:
        recorder.handle(event)
    recorder.close()
    data = path.read_bytes()
    assert data.endswith(end_line(WALL0, events[-1].t).encode())
    path.write_bytes(data[:data.rindex(b'{"type": "recording"')])


async def until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Wait for `condition`, checking every 10 ms, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Collector:
    """A follow of `path` running beside the test, collecting what it yields."""

    def __init__(self, path: Path, **kwargs: Any) -> None:
        self.tail = Tail(path, **kwargs)
        self.events: list[Any] = []
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        async for batch in follow_batches(self.tail, poll=POLL, idle=None):
            self.events.extend(batch)

    async def finished(self, timeout: float = 15.0) -> None:
        await asyncio.wait_for(self.task, timeout)


# --- live -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("offload", [False, True], ids=["inline", "writer-process"])
async def test_events_arrive_while_the_recorder_is_still_writing(tmp_path: Path, offload: bool) -> None:
    path = tmp_path / "live.jsonl"
    recorder = Recorder(path, wall0=WALL0, offload=offload)
    await recorder.start()
    follower = Collector(path)
    first, second = _round(0, 5, 0.0), _round(1, 5, 2.0)
    try:
        for event in first[:3]:  # RunStarted, ProbeStarted, StageStarted (a boundary: handed to the OS now)
            recorder.handle(event)
        await until(lambda: len(follower.events) >= 3, "the first lines, live")
        assert follower.events == first[:3] and recorder.active and not follower.task.done()
        for event in first[3:]:
            recorder.handle(event)
        await until(lambda: len(follower.events) >= len(first), "the whole first round")
        assert not follower.task.done()  # a round's RunFinished is not the end: a watch goes on
        for event in second:
            recorder.handle(event)
        await until(lambda: len(follower.events) >= len(first) + len(second), "the second round")
        assert not follower.task.done() and follower.tail.ended is None and follower.tail.live
    finally:
        recorder.close()
    await follower.finished()  # ends once the recorder closes the recording
    assert follower.events == first + second
    assert follower.tail.ended == "end" and follower.tail.skipped == 0
    assert has_ended(path)


async def test_a_real_run_is_followed_live_into_the_same_events(fast_config: Any, tmp_path: Path) -> None:
    """The engine against the embedded sandbox, recorded as the app records; the follower (the app's side) sees
    the run's events while the run is still going, and all of them, in order, by the end."""
    bus = EventBus()
    live: list[Any] = []
    bus.subscribe(live.append)
    clock = Clock()
    path = tmp_path / "run.jsonl"
    recorder = Recorder(path, wall0=clock.wall, notify=bus.publish, offload=True)
    bus.subscribe(recorder.handle)
    await recorder.start()
    delivered: list[Any] = []
    ended: list[Follower] = []
    follower = Follower(path, delivered.append, poll=POLL, idle=None, on_done=ended.append)
    task = asyncio.ensure_future(follower.run())
    seen_by_the_end: list[int] = []
    bus.subscribe(lambda e: seen_by_the_end.append(len(delivered)) if isinstance(e, RunFinished) else None)
    try:
        await run_queue(fast_config, resolve_target(fast_config, "sandbox"), bus, RunOptions(fault="silent"),
                        clock)
        assert seen_by_the_end and seen_by_the_end[0] > 0  # lines reached the follower while the run went on
        await until(lambda: len(delivered) == len(live), "every event of the run")
        assert not follower.done and follower.live
    finally:
        recorder.close()
    await asyncio.wait_for(task, 15)
    assert delivered == live and ended == [follower]
    assert follower.done and follower.ended == "end" and follower.error is None
    assert "finished" in follower.position() and f"{len(live):,} events" in follower.position()


async def test_a_late_joiner_gets_everything_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "late.jsonl"
    recorder = Recorder(path, wall0=WALL0, offload=True)
    await recorder.start()
    events = _round(0, 30, 0.0) + _round(1, 30, 2.0)
    half = len(events) // 2 + 3
    try:
        for event in events[:half]:
            recorder.handle(event)
        recorder.flush()
        await until(lambda: len(read_recording(path).events) == half, "the first half on disk")
        delivered: list[Any] = []
        follower = Follower(path, delivered.append, poll=POLL, idle=None)
        task = asyncio.ensure_future(follower.run())
        await until(lambda: len(delivered) == half, "the catch-up")
        assert delivered == events[:half] and follower.live and not follower.done
        for event in events[half:]:
            recorder.handle(event)
    finally:
        recorder.close()
    await asyncio.wait_for(task, 15)
    assert delivered == events and follower.ended == "end"


async def test_catch_up_comes_in_chunks_the_ui_can_draw_between(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    recorder = Recorder(path, wall0=WALL0)
    events = _round(0, 20_000, 0.0)
    for event in events:
        recorder.handle(event)
    recorder.close()
    delivered: list[Any] = []
    follower = Follower(path, delivered.append, poll=POLL, idle=None)
    seen: list[int] = []

    async def ui() -> None:  # what the app's tick would see between chunks
        while not follower.done:
            seen.append(len(delivered))
            await asyncio.sleep(0)

    drawing = asyncio.ensure_future(ui())
    await asyncio.wait_for(follower.run(), 30)
    await drawing
    assert delivered == events and follower.ended == "end"
    assert any(0 < n < len(events) for n in seen)  # the loop ran in the middle of the catch-up


# --- rotation -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("offload", [False, True], ids=["inline", "writer-process"])
async def test_rotation_is_followed_into_the_next_parts_live(tmp_path: Path, offload: bool) -> None:
    path = tmp_path / "watch.jsonl"
    stale = part_path(path, 2)  # left by an earlier session with the same name: the writer skips it, so must we
    stale.write_text(header_line(WALL0 - 99.0) + json.dumps({"type": "notice", "t": 0.0, "level": "info",
                                                              "message": "not this recording"}) + "\n")
    recorder = Recorder(path, wall0=WALL0, offload=offload, max_bytes=CAP)
    await recorder.start()
    follower = Collector(path)
    events: list[Any] = []
    try:
        for n in range(8):
            chunk = _round(n, 40, n * 2.0)
            events += chunk
            for event in chunk:
                recorder.handle(event)
            recorder.flush()
            await until(lambda: len(follower.events) >= len(events), f"round {n}, live")
            assert not follower.task.done()
        assert len(recording_parts(path)) >= 5  # it did rotate while being followed
    finally:
        recorder.close()
    await follower.finished()
    assert follower.events == events and follower.tail.ended == "end"
    assert follower.tail.parts == [p for p in recording_parts(path) if p != stale] == recorder.parts
    assert stale not in follower.tail.parts


async def test_a_late_joiner_catches_up_across_parts(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    recorder = Recorder(path, wall0=WALL0, max_bytes=CAP)
    events: list[Any] = []
    for n in range(12):
        events += _round(n, 40, n * 2.0)
    for event in events:
        recorder.handle(event)
    recorder.close()
    parts = recording_parts(path)
    whole = Collector(path)
    await whole.finished()
    assert whole.events == events and whole.tail.parts == parts and whole.tail.left_out == []
    # a long recording: the catch-up starts where replay would, at the newest parts that fit its budget
    budget = Collector(path, max_catchup_bytes=3 * CAP)
    await budget.finished()
    replay = read_recording(path, max_bytes=3 * CAP)  # (a part may start mid-round: its round comes first)
    assert budget.events == replay.events and budget.tail.parts == replay.parts
    assert isinstance(budget.events[0], RunStarted)
    assert budget.tail.left_out == replay.left_out == parts[:len(parts) - len(replay.parts)] != []
    # a part named on its own is followed from there on
    from_part = Collector(parts[-3])
    await from_part.finished()
    assert from_part.tail.parts == parts[-3:]
    size = sum(p.stat().st_size for p in parts[-3:])
    assert from_part.events == read_recording(path, max_bytes=size).events


# --- lines ----------------------------------------------------------------------------------------------------------

def test_a_line_being_written_is_not_decoded_until_its_end_arrives(tmp_path: Path) -> None:
    path = tmp_path / "partial.jsonl"
    notice = Notice(0.5, "info", "hello — é")
    line = (json.dumps({"type": "notice", "t": 0.5, "wall_ts": WALL0 + 0.5, "level": "info",
                        "message": "hello — é"}, ensure_ascii=False) + "\n").encode("utf-8")
    with open(path, "wb", buffering=0) as out:
        out.write(header_line(WALL0).encode())
        tail = Tail(path)
        assert tail.read() == []
        cut = line.index("é".encode()) + 1  # in the middle of a character, too
        out.write(line[:cut])
        assert tail.read() == [] and tail.ended is None
        out.write(line[cut:])
        assert tail.read() == [notice]
        end = end_line(WALL0, 0.5).encode()
        out.write(end[:-10])  # the last line, half written: not the end yet
        assert tail.read() == [] and tail.ended is None
        out.write(end[-10:])
        assert tail.read() == [] and tail.ended == "end"
    assert tail.skipped == 0 and tail.version == 2 and tail.wall0 == WALL0


async def test_a_session_appended_after_the_end_line_is_read_on(tmp_path: Path) -> None:
    """`--record same.jsonl` twice: the first session's last line is not the end of the file."""
    path = tmp_path / "twice.jsonl"
    a, b = _round(0, 3, 0.0), _round(0, 3, 0.0)
    first = Recorder(path, wall0=WALL0)
    for event in a:
        first.handle(event)
    first.close()
    second = Recorder(path, wall0=WALL0 + 60)
    try:
        for event in b[:4]:
            second.handle(event)
        second.flush()
        follower = Collector(path)
        await until(lambda: len(follower.events) >= len(a) + 4, "both sessions")
        assert follower.events == a + b[:4] and not follower.task.done()
        for event in b[4:]:
            second.handle(event)
    finally:
        second.close()
    await follower.finished()
    assert follower.events == a + b and follower.tail.ended == "end"
    assert read_recording(path).events == a + b and not read_recording(path).truncated  # replay tolerates it


async def test_a_recording_left_without_its_end_stops_at_the_idle_deadline(tmp_path: Path) -> None:
    """A recorder killed mid-write leaves no last line: the follow ends once the file has been still for `idle`
    (counted from its last change, so a recording abandoned long ago ends right after the catch-up)."""
    path = tmp_path / "killed.jsonl"
    events = _round(0, 3, 0.0)
    _unclosed(path, events)
    with open(path, "ab") as out:
        out.write(b'{"type": "notice", "t": 9.0, "lev')  # the line it was writing when it died
    hour_ago = time.time() - 3600
    os.utime(path, (hour_ago, hour_ago))
    tail = Tail(path)
    got = [e async for e in follow(tail, poll=POLL, idle=60.0)]
    assert got == events and tail.ended == "idle" and tail.truncated
    assert not has_ended(path)


def test_what_cannot_be_followed_says_why(tmp_path: Path) -> None:
    with pytest.raises(FollowError, match="no such recording"):
        Tail(tmp_path / "missing.jsonl")
    with pytest.raises(FollowError, match="is a folder"):
        Tail(tmp_path)
    (tmp_path / "notes.txt").write_text("shopping list\n")
    with pytest.raises(FollowError, match="not a stagewatch recording"):
        Tail(tmp_path / "notes.txt")
    (tmp_path / "new.jsonl").write_bytes(b"")  # a recording just opened, nothing flushed yet: followed
    tail = Tail(tmp_path / "new.jsonl")
    assert tail.read() == [] and tail.ended is None and tail.live
    tail.close()


# --- which recording: --latest --------------------------------------------------------------------------------------

def _made(folder: Path, name: str, age_s: float, *, closed: bool) -> Path:
    path = folder / name
    if closed:
        recorder = Recorder(path, wall0=WALL0)
        for event in _round(0, 2, 0.0):
            recorder.handle(event)
        recorder.close()
    else:
        _unclosed(path, _round(0, 2, 0.0))
    when = time.time() - age_s
    os.utime(path, (when, when))
    return path


def test_latest_picks_the_newest_recording_still_being_written(tmp_path: Path) -> None:
    assert latest_recording(tmp_path) is None
    done_old = _made(tmp_path, "20260101-000000-a.jsonl", 600, closed=True)
    assert latest_recording(tmp_path) == done_old  # none is open: the newest at all
    open_one = _made(tmp_path, "20260101-000100-b.jsonl", 300, closed=False)
    done_new = _made(tmp_path, "20260101-000200-c.jsonl", 10, closed=True)
    assert latest_recording(tmp_path) == open_one  # newer ones were closed: the one still written wins
    os.utime(open_one, (time.time() - 7200, time.time() - 7200))
    assert latest_recording(tmp_path) == done_new  # open but still for two hours: abandoned, not live


# --- the command ----------------------------------------------------------------------------------------------------

def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JWT_SECRET_KEY", "STAGEWATCH_CONFIG", "NO_COLOR")}
    env["PYTHONPATH"] = str(ROOT)
    return env


async def _record_run(config: Any, path: Path) -> list[Any]:
    bus = EventBus()
    live: list[Any] = []
    bus.subscribe(live.append)
    clock = Clock()
    recorder = Recorder(path, wall0=clock.wall, notify=bus.publish)
    bus.subscribe(recorder.handle)
    await recorder.start()
    try:
        await run_queue(config, resolve_target(config, "sandbox"), bus, RunOptions(fault="closed-before-ready"),
                        clock)
    finally:
        recorder.close()
    return live


def _printed(events: list[Any]) -> str:
    out = io.StringIO()
    printer = Printer(out=out, color=False)
    for event in events:
        printer.handle(event)
    return out.getvalue()


async def test_follow_print_of_a_finished_recording_prints_the_run_lines(fast_config: Any, tmp_path: Path) -> None:
    path = tmp_path / "done.jsonl"
    live = await _record_run(fast_config, path)
    proc = subprocess.run([*FOLLOW, "--print", "--idle", "0", str(path)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path, env=_env())  # --idle 0: it can only end at the end line
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == _printed(live)  # the lines `stagewatch run` printed live
    assert "stagewatch → sandbox" in proc.stdout and "verdict: FAIL" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == "stagewatch: the recording ended"


async def test_follow_print_follows_a_recording_being_written(tmp_path: Path) -> None:
    path = tmp_path / "open.jsonl"
    recorder = Recorder(path, wall0=WALL0, offload=True)
    await recorder.start()
    first = _round(0, 3, 0.0)
    proc = None
    try:
        for event in first:
            recorder.handle(event)
        proc = await asyncio.create_subprocess_exec(*FOLLOW, "--print", str(path), cwd=tmp_path, env=_env(),
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        lines: list[str] = []
        while not any(line.startswith("verdict:") for line in lines):
            lines.append((await asyncio.wait_for(proc.stdout.readline(), 30)).decode())
            assert lines[-1], "follow --print ended before the recording did"
        assert lines[0].startswith("stagewatch → sandbox") and proc.returncode is None  # still following
    finally:
        recorder.close()
    assert proc is not None and proc.stdout is not None and proc.stderr is not None
    await asyncio.wait_for(proc.wait(), 30)  # the recorder closed it: the follow ends by itself
    assert proc.returncode == 0
    assert (await proc.stderr.read()).decode().strip().splitlines()[-1] == "stagewatch: the recording ended"


@pytest.mark.parametrize("args, words", [
    (["--print", "missing.jsonl"], "missing.jsonl: no such recording"),
    (["--print"], "give a RECORDING or --latest"),
    (["--print", "--latest", "x.jsonl"], "give a RECORDING or --latest"),
    (["--rounds", "x.jsonl"], "--rounds and --verbose go with --print"),
    (["--print", "."], "is a folder"),
], ids=["missing", "nothing", "both", "rounds-without-print", "folder"])
def test_follow_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], words: str) -> None:
    proc = subprocess.run([*FOLLOW, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=_env())
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("stagewatch: error: ") and words in proc.stderr


def test_an_empty_file_left_so_is_refused_not_waited_on(tmp_path: Path) -> None:
    """A recorder writes its header at once: an empty file nobody has touched for a while is one line, exit 2 (not a
    silent wait until the idle deadline)."""
    path = tmp_path / "empty.jsonl"
    path.touch()
    old = time.time() - 60
    os.utime(path, (old, old))
    proc = subprocess.run([*FOLLOW, "--print", str(path)], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env=_env())
    assert proc.returncode == 2 and "empty, and nothing has written to it" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
