"""Rotation and retention of recordings: a long watch goes on in part files (each readable alone, none over twice
the cap, every event exactly once when read as one), and the default recordings folder keeps the newest N and
nothing older than D days, touching only its own recordings."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from probes.config import Config
from probes.events import (Frame, ProbeFinished, ProbeStarted, RunFinished, RunStarted, StageFinished,
                           StageStarted)
from probes.recording import Recorder, default_recording_path, read_recording
from probes.retention import prune_recordings
from probes.rotation import MIN_PART_BYTES, part_path, recording_parts

WALL0 = 1_700_000_000.25
CAP = 20_000
DAY = 86400.0


def _round(n: int, frames: int, t0: float) -> list[Any]:
    """One round of the queue: a probe with a stage whose frames make the bulk, as a watch records it."""
    t = t0
    events: list[Any] = [RunStarted(t, "sandbox", "http://127.0.0.1:1", (("p", "probe", 0),), WALL0)]
    events.append(ProbeStarted(t + 0.001, "p", "probe", 0, ("agent",)))
    events.append(StageStarted(t + 0.002, "p", "agent", "expect_events", 5.0))
    for i in range(frames):
        events.append(Frame(t + 0.003 + i * 1e-4, "p", "in", 1.5 + i, 60,
                            f'{{"type":"agent_thinking","round":{n},"i":{i},"pad":"{"x" * 40}"}}'))
    events.append(StageFinished(t + 0.5, "p", "agent", "pass", 497.0, f"round {n} ok"))
    events.append(ProbeFinished(t + 0.6, "p", "pass", 599.0, None, frames, 1))
    events.append(RunFinished(t + 0.7, "pass", 700.0))
    return events


def _watch(rounds: int, frames: int) -> list[Any]:
    events: list[Any] = []
    for n in range(rounds):
        events += _round(n, frames, n * 2.0)
    return events


def _record(path: Path, events: list[Any], offload: bool, max_bytes: int | None = CAP) -> Recorder:
    recorder = Recorder(path, wall0=WALL0, offload=offload, max_bytes=max_bytes)
    for event in events:
        recorder.handle(event)
    recorder.close()
    assert recorder.error is None
    return recorder


def _header(path: Path) -> dict[str, Any]:
    head = json.loads(path.read_bytes().split(b"\n", 1)[0])
    assert head["type"] == "recording" and head["format"] == "stagewatch" and head["version"] == 2
    return head  # type: ignore[no-any-return]


@pytest.mark.parametrize("offload", [False, True], ids=["inline", "writer-process"])
def test_a_watch_rotates_at_round_boundaries_and_reads_back_whole(tmp_path: Path, offload: bool) -> None:
    events = _watch(rounds=60, frames=40)  # about 8 KB a round: a part holds two or three rounds
    path = tmp_path / "watch.jsonl"
    recorder = _record(path, events, offload)
    parts = recording_parts(path)
    assert recorder.path == path and recorder.parts == parts and len(parts) >= 10
    assert parts[1:] == [part_path(path, n) for n in range(2, len(parts) + 1)]
    alone: list[Any] = []
    for number, part in enumerate(parts, start=1):
        assert part.stat().st_size <= 2 * CAP and (part.stat().st_mode & 0o777) == 0o600
        head = _header(part)
        assert head["wall0"] == WALL0 and head.get("part", 1) == number and "round" not in head
        replay = read_recording(part, follow_parts=False)
        assert replay.parts == [part] and replay.skipped == 0 and not replay.truncated
        assert isinstance(replay.events[0], RunStarted)  # each part starts with a round (they fit in the cap)
        if number < len(parts):
            assert part.stat().st_size >= CAP  # it rotated only once over the cap
        alone += replay.events
        for line in part.read_bytes().splitlines()[1:]:  # wall times stay those of the one run
            record = json.loads(line)
            assert record["wall_ts"] == pytest.approx(WALL0 + record["t"], abs=1e-5)
    assert alone == events
    whole = read_recording(path)
    assert whole.events == events and whole.parts == parts and whole.left_out == []
    assert whole.wall0 == WALL0


@pytest.mark.parametrize("offload", [False, True], ids=["inline", "writer-process"])
def test_a_round_larger_than_the_cap_is_split_before_twice_the_cap(tmp_path: Path, offload: bool) -> None:
    events = _watch(rounds=3, frames=600)  # about 100 KB a round: five times the cap
    path = tmp_path / "big.jsonl"
    recorder = _record(path, events, offload)
    parts = recorder.parts
    assert parts == recording_parts(path) and len(parts) >= 10
    for part in parts:
        assert part.stat().st_size <= 2 * CAP
        replay = read_recording(part, follow_parts=False)
        assert isinstance(replay.events[0], RunStarted)  # mid-round parts carry their round's start
    whole = read_recording(path)
    assert whole.events == events  # every event once: the round context in a header is not repeated


def test_parts_start_mid_round_only_when_a_round_outgrows_twice_the_cap(tmp_path: Path) -> None:
    events = _watch(rounds=2, frames=600)
    path = tmp_path / "r.jsonl"
    _record(path, events, offload=False)
    starts = [e for e in events if isinstance(e, RunStarted)]
    with_context = [p for p in recording_parts(path) if "round" in _header(p)]
    assert with_context
    for part in with_context:
        first = read_recording(part, follow_parts=False).events[0]
        assert first in starts  # the round the part continues, whose wall time its events need
        raw_events = [json.loads(line)["type"] for line in part.read_bytes().splitlines()[1:]]
        assert raw_events[0] != "run_started"  # the file itself holds no second RunStarted


def test_without_a_cap_nothing_rotates(tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    recorder = _record(path, _watch(rounds=20, frames=40), offload=False, max_bytes=None)
    assert recorder.parts == [path] == recording_parts(path)
    assert b'""' not in path.read_bytes() and path.read_bytes().count(b"\n\n") == 0


def test_a_tiny_cap_is_raised_to_the_minimum(tmp_path: Path) -> None:
    path = tmp_path / "tiny.jsonl"
    recorder = _record(path, _watch(rounds=10, frames=40), offload=False, max_bytes=10)
    assert all(p.stat().st_size <= 2 * MIN_PART_BYTES for p in recorder.parts)
    assert len(recorder.parts) < 30


def test_a_part_name_already_taken_is_skipped_not_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    stale = part_path(path, 2)
    stale.write_text("left by another session\n")
    recorder = _record(path, _watch(rounds=10, frames=40), offload=False)
    assert stale.read_text() == "left by another session\n"
    assert stale not in recorder.parts and part_path(path, 3) in recorder.parts
    whole = read_recording(path)
    assert stale in whole.left_out and whole.events == _watch(rounds=10, frames=40)  # no header: not ours


async def test_the_switch_happens_in_the_writer_process(tmp_path: Path) -> None:
    """With offload the parent only ships batches: the part files are opened and headed by the child."""
    path = tmp_path / "w.jsonl"
    recorder = Recorder(path, wall0=WALL0, offload=True, max_bytes=CAP)
    await recorder.start()
    try:
        for event in _watch(rounds=20, frames=40):
            recorder.handle(event)
        recorder.flush()
        assert recorder._sink is not None and recorder._sink.parts == []  # the parent opened nothing
        deadline = time.monotonic() + 10
        while len(recorder.parts) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)  # the child announces its parts on its own time: poll, no fixed wait
        assert len(recorder.parts) >= 3
    finally:
        recorder.close()
    assert recorder.parts == recording_parts(path)


def test_reading_a_long_rotated_recording_is_bounded_to_its_newest_parts(tmp_path: Path) -> None:
    events = _watch(rounds=60, frames=40)
    path = tmp_path / "long.jsonl"
    _record(path, events, offload=False)
    parts = recording_parts(path)
    replay = read_recording(path, max_bytes=5 * CAP)
    assert replay.parts == parts[-len(replay.parts):] and 2 <= len(replay.parts) < len(parts)
    assert replay.left_out == parts[:-len(replay.parts)]
    assert sum(p.stat().st_size for p in replay.parts) <= 5 * CAP
    first = replay.events[0]
    assert isinstance(first, RunStarted) and replay.events == events[events.index(first):]
    newest = read_recording(path, max_bytes=1)
    assert newest.parts == parts[-1:]  # at least the newest part, whatever its size


def test_a_foreign_file_named_like_a_part_is_left_out(tmp_path: Path) -> None:
    events = _watch(rounds=12, frames=40)
    path = tmp_path / "rec.jsonl"
    _record(path, events, offload=False)
    parts = recording_parts(path)
    foreign = part_path(path, len(parts) + 5)
    foreign.write_text('{"type": "notice", "t": 1.0, "level": "info", "message": "not a part"}\n')
    replay = read_recording(path)
    assert replay.events == events and replay.left_out == [foreign]
    assert read_recording(path, follow_parts=False).events == read_recording(parts[0], follow_parts=False).events


# --- retention ------------------------------------------------------------------------------------------------

def _rec(folder: Path, name: str, age_days: float, now: float, text: str = "{}\n") -> Path:
    path = folder / name
    path.write_text(text)
    os.utime(path, (now - age_days * DAY, now - age_days * DAY))
    return path


def test_prune_keeps_the_newest_recordings_and_their_parts_as_one(tmp_path: Path) -> None:
    now = 2_000_000_000.0
    names = [f"2024010{d}-120000-sandbox.jsonl" for d in range(1, 7)]
    files = [_rec(tmp_path, n, age_days=6 - i, now=now) for i, n in enumerate(names)]  # the last is the newest
    old_part = _rec(tmp_path, "20240101-120000-sandbox.part2.jsonl", age_days=5.5, now=now)
    removed = prune_recordings(tmp_path, keep_files=3, keep_days=30, now=now)
    assert sorted(removed) == sorted(files[:3] + [old_part])
    assert all(f.exists() for f in files[3:])


def test_prune_removes_by_age_but_a_unit_is_as_young_as_its_newest_part(tmp_path: Path) -> None:
    now = 2_000_000_000.0
    old = _rec(tmp_path, "20240101-120000-staging.jsonl", age_days=10, now=now)
    watching = _rec(tmp_path, "20240102-120000-staging.jsonl", age_days=10, now=now)
    fresh_part = _rec(tmp_path, "20240102-120000-staging.part7.jsonl", age_days=0.01, now=now)
    young = _rec(tmp_path, "20240103-120000-demo-none.jsonl", age_days=1, now=now)
    removed = prune_recordings(tmp_path, keep_files=40, keep_days=7, now=now)
    assert removed == [old]
    assert watching.exists() and fresh_part.exists() and young.exists()


def test_prune_touches_only_its_own_regular_files(tmp_path: Path) -> None:
    now = 2_000_000_000.0
    folder = tmp_path / "recordings"
    folder.mkdir()
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text("the user's\n")
    foreign = [_rec(folder, n, age_days=100, now=now) for n in (
        "notes.jsonl", "session.jsonl", "20240101-120000-x.json", "20240101-120000-x.jsonl.bak",
        "2024-01-01-x.jsonl", "20240101-120000-.jsonl")]
    link = folder / "20240101-120000-link.jsonl"
    link.symlink_to(elsewhere)
    os.utime(link, (now - 100 * DAY,) * 2, follow_symlinks=False)
    (folder / "20240101-120000-dir.jsonl").mkdir()
    ours = _rec(folder, "20240101-120000-sandbox.jsonl", age_days=100, now=now)
    assert prune_recordings(folder, keep_files=0, keep_days=1, now=now) == [ours]
    assert all(f.exists() for f in foreign) and link.is_symlink() and elsewhere.read_text() == "the user's\n"
    assert (folder / "20240101-120000-dir.jsonl").is_dir()


def test_prune_never_raises(tmp_path: Path) -> None:
    assert prune_recordings(tmp_path / "missing", keep_files=1, keep_days=1) == []
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert prune_recordings(a_file, keep_files=1, keep_days=1) == []


def test_a_default_recording_prunes_its_folder_and_a_named_one_does_not(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        packaged_config: Config) -> None:
    from tui.cli_common import record_path_for as _record_path

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    folder = default_recording_path("sandbox").parent
    folder.mkdir(parents=True)
    now = time.time()
    stale = _rec(folder, "20200101-000000-sandbox.jsonl", age_days=365, now=now)
    named = tmp_path / "mine"
    named.mkdir()
    kept = _rec(named, "20200101-000000-sandbox.jsonl", age_days=365, now=now)
    assert _record_path(str(named / "new.jsonl"), False, "sandbox", packaged_config) == named / "new.jsonl"
    assert _record_path(None, True, "sandbox", packaged_config) is None
    assert stale.exists() and kept.exists()
    path = _record_path(None, False, "sandbox", packaged_config)
    assert path is not None and path.parent == folder
    assert not stale.exists() and kept.exists()
