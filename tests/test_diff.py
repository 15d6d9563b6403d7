"""Comparing two runs (probes/diff.py, `stagewatch diff`): recordings made by the real engine against the embedded
sandbox, one healthy and one with `closed-before-ready`; the diff must point at golden-path's handshake — the
ready frame on one side, the server's close on the other — in text, in Markdown and from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from probes.bus import EventBus
from probes.clock import Clock
from probes.config import Config, resolve_target
from probes.diff import (MAX_FRAMES, DiffError, WireLog, diff_models, diff_recordings, diff_rounds, load_run,
                         render_markdown, render_text)
from probes.events import Closed, Frame, ProbeStarted, RunStarted, StageStarted
from probes.model import RunModel
from probes.recording import Recorder, RecordingError
from probes.runner import RunOptions, run_queue

ROOT = Path(__file__).resolve().parent.parent
PROBES = ("health", "golden-path")


async def _record(config: Config, path: Path, faults: tuple[str, ...]) -> None:
    """One recording of `len(faults)` rounds (a watch: one RunStarted … RunFinished per round), a fault per round."""
    bus = EventBus()
    clock = Clock()
    recorder = Recorder(path, wall0=clock.wall, notify=bus.publish)
    bus.subscribe(recorder.handle)
    try:
        for fault in faults:
            await run_queue(config, resolve_target(config, "sandbox"), bus, RunOptions(fault=fault, only=PROBES),
                            clock)
    finally:
        recorder.close()


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory, fast_config: Config) -> dict[str, Path]:
    import asyncio

    folder = tmp_path_factory.mktemp("diff")
    paths = {"ok": folder / "ok.jsonl", "cbr": folder / "cbr.jsonl", "watch": folder / "watch.jsonl"}

    async def make() -> None:
        await _record(fast_config, paths["ok"], ("none",))
        await _record(fast_config, paths["cbr"], ("closed-before-ready",))
        await _record(fast_config, paths["watch"], ("none", "closed-before-ready"))

    asyncio.run(make())
    return paths


def test_the_diff_points_at_the_handshake(recordings):
    d = diff_recordings(recordings["ok"], recordings["cbr"])
    assert d.status_differs
    gp = next(p for p in d.probes if p.id == "golden-path")
    assert (gp.status_a, gp.status_b) == ("pass", "fail")
    assert gp.divergence is not None and gp.divergence.stage == "handshake"
    assert gp.frame_divergence == 0
    a, b = gp.rows[0]
    assert a is not None and a.direction == "in" and a.type == "connection_established"
    assert b is not None and b.close is not None and (b.close.code, b.close.by, b.close.reason) == (
        1000, "server", "main cleanup")
    assert gp.headline.startswith("golden-path: A pass, B FAIL at handshake — first divergence")
    assert "B's server closed 1000 'main cleanup' where A received connection_established" in gp.headline
    handshake = next(s for s in gp.stages if s.name == "handshake")
    assert (handshake.status_a, handshake.status_b) == ("pass", "fail") and handshake.delta_ms is not None
    assert gp.diagnoses_a == [] and gp.diagnoses_b == ["closed-before-ready"]
    health = next(p for p in d.probes if p.id == "health")
    assert not health.differs and health.headline.startswith("health: A pass, B pass — no divergence")
    assert d.first is gp
    assert d.summary.startswith("first divergence: golden-path at handshake — B's server closed 1000")


def test_text_and_markdown_say_the_same(recordings):
    d = diff_recordings(recordings["ok"], recordings["cbr"])
    text = render_text(d, color=False)
    assert "\x1b[" not in text
    assert "first divergence: golden-path at handshake" in text
    assert "◀ first divergence" in text
    assert "← connection_established" in text and "✕ 1000 'main cleanup' by server" in text
    assert "closed-before-ready" in text
    assert "\x1b[" in render_text(d, color=True)
    md = render_markdown(d)
    assert md.startswith("## stagewatch diff")
    assert "**first divergence: golden-path at handshake" in md
    assert "| golden-path | ✅ pass | ❌ fail at handshake | handshake: B's server closed 1000" in md
    assert "| **handshake** | pass |" in md
    assert "**◀ first divergence**" in md


def test_the_command_prints_it_and_exits_1(recordings):
    proc = subprocess.run([sys.executable, "-m", "tui.cli", "diff", str(recordings["ok"]), str(recordings["cbr"])],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 1, proc.stderr
    assert "first divergence: golden-path at handshake" in proc.stdout
    assert "B's server closed 1000 'main cleanup' where A received connection_established" in proc.stdout
    same = subprocess.run([sys.executable, "-m", "tui.cli", "diff", str(recordings["ok"]), str(recordings["ok"]),
                           "--markdown", "--probe", "golden-path"], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)
    assert same.returncode == 0, same.stderr
    assert same.stdout.startswith("## stagewatch diff") and "no divergence" in same.stdout


def test_a_garbled_or_missing_file_is_one_line_and_exit_2(recordings, tmp_path):
    garbled = tmp_path / "garbled.jsonl"
    garbled.write_bytes(b"\x00\x1b]0;owned\x07 this is not a recording\n{{{\n")
    for bad in (garbled, tmp_path / "missing.jsonl"):
        proc = subprocess.run([sys.executable, "-m", "tui.cli", "diff", str(recordings["ok"]), str(bad)],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert proc.returncode == 2
        assert proc.stdout == ""
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("stagewatch: error: stagewatch diff:"), proc.stderr
        assert "Traceback" not in proc.stderr
    with pytest.raises(RecordingError):
        load_run(garbled)


def test_two_rounds_of_one_watch_recording(recordings):
    path = recordings["watch"]
    d = diff_recordings(path, path, round_a=1, round_b=2)
    assert (d.a.round, d.b.round, d.a.rounds) == (1, 2, 2)
    gp = next(p for p in d.probes if p.id == "golden-path")
    assert gp.divergence is not None and gp.divergence.stage == "handshake"
    assert "round 1 of 2" in render_text(d) and "round 2 of 2" in render_text(d)
    alike = diff_recordings(path, path, round_a=1, round_b=1)
    assert not alike.status_differs and alike.first is None
    assert alike.summary.startswith("no divergence")
    latest = load_run(path)  # without a round: each probe's latest result (the second round's)
    assert latest.model.probes["golden-path"].status == "fail"
    with pytest.raises(DiffError, match="no round 3"):
        load_run(path, round=3)
    proc = subprocess.run([sys.executable, "-m", "tui.cli", "diff", str(path), str(path), "--round-a", "1",
                           "--round-b", "2"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 1 and "first divergence: golden-path at handshake" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "tui.cli", "diff", str(path), str(path), "--round-b", "9"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and "no round 9" in proc.stderr


def test_the_rounds_a_live_history_keeps(recordings):
    """A TUI comparing two rounds of the watch it holds: no WireLog, the rounds' own snapshots."""
    from probes.recording import read_recording

    model = RunModel()
    model.apply_all(read_recording(recordings["watch"]).events)
    d = diff_rounds(model.history, 1, 2)
    gp = next(p for p in d.probes if p.id == "golden-path")
    assert gp.partial and gp.status_differs and gp.divergence is not None
    assert gp.divergence.stage == "handshake"
    with pytest.raises(DiffError):
        diff_rounds(model.history, 1, 7)


def _frames(probe: str, types: list[str], t0: float = 1.0) -> list[object]:
    events: list[object] = [RunStarted(0.0, "t", "http://x", ((probe, probe, 0),), 1000.0),
                            ProbeStarted(t0, probe, probe, 0, ("agent",)), StageStarted(t0, probe, "agent", "x")]
    for k, kind in enumerate(types):
        events.append(Frame(t0 + k * 1e-6, probe, "in", float(k), 20, json.dumps({"type": kind})))
    events.append(Closed(t0 + 1, probe, 1000, "Normal Closure", "bye", "server", 9.0, True))
    return events


def test_frames_compared_are_bounded_and_outside_text_is_made_visible():
    many = ["tick"] * (MAX_FRAMES + 500)
    a_events = _frames("flood", many)
    b_events = _frames("flood", [*many[:10], "evil\x1b]0;x\x07", *many[11:]])
    sides = []
    for events in (a_events, b_events):
        model, wire = RunModel(), WireLog()
        for e in events:
            model.apply(e)  # type: ignore[arg-type]
            wire.apply(e)  # type: ignore[arg-type]
        sides.append((model, wire))
    d = diff_models(sides[0][0], sides[1][0], wire_a=sides[0][1], wire_b=sides[1][1])
    p = d.probes[0]
    assert len(p.rows) == MAX_FRAMES and p.capped and p.seen_a == MAX_FRAMES + 501
    assert p.frame_divergence == 10
    text = render_text(d)
    assert f"the first {MAX_FRAMES} compared" in text
    assert "\x1b]" not in text and "\x07" not in text and "evil\\x1b]0;x\\x07" in text
    assert "\x1b]" not in render_markdown(d)
