"""Comparing two runs: two recordings, two rounds of a watch, or a recording against a live run.

Per probe present in either run: its status A vs B; each stage's status and duration side by side with the delta;
its frames and closes aligned by order and type (direction + protocol type from `frames.frame_type`, sizes shown
but not compared) with the first divergence marked; the close A vs B; the diagnosis codes A vs B; and a one-line
headline ("golden-path: A pass, B FAIL at handshake — first divergence: B's server closed 1000 'main cleanup' where
A received connection_established"). The `RunDiff` names the first probe and stage that diverge.

Inputs are the engine's own folds: a `RunModel` per side (probes/model.py) and, for the frames, a `WireLog` per side
fed the same events (the model keeps only the last few frames of a probe; without a log, those are compared and the
diff says so). `load_run` reads a recording (a rotated one whole, `probes.recording.read_recording`) and can pick
one round of a watch (rounds are delimited by RunStarted). `diff_rounds` compares two rounds a live `History` still
keeps whole. Bounded: at most `MAX_FRAMES` frames and closes per probe are compared, and the diff says when more
were seen.

The diff holds raw outside text (frame types, close reasons, stage details); `render_text` / `render_markdown` make
it visible (`probes.sanitize`) as every report does. The headline is built from sanitised pieces already.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from . import sanitize
from .closecodes import close_sentence
from .events import AnyEvent, Closed, Frame, ProbeStarted, RunStarted, StageStarted
from .frames import frame_type, parse_json
from .model import KEEP_FRAMES, ProbeModel, RunModel, StageModel
from .recording import RECORDING_VERSION, read_recording
from .watch import History

MAX_FRAMES = 2000  # frames and closes compared per probe; more are counted and the diff says so
_PARSE_MAX = 256 * 1024  # longer text frames are not parsed for their type
_TYPE_CHARS = 60  # a frame type shown longer than this is cut


class DiffError(Exception):
    """The runs cannot be compared as asked (no run in a recording, a round it does not have, an unknown probe)."""


# --- the wire of a probe: its frames and closes, in order ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WireItem:
    """One frame or close of a probe's run, as compared: `key` is what must agree (direction and type for a frame;
    code and who closed for a close); size, time and reason are shown only."""

    index: int
    stage: str | None  # the stage running when it passed (None: not known)
    direction: str  # "in", "out", or "close"
    type: str  # the frame's protocol type, else "json"/"text"/"binary"; "close" for a close
    size: int
    ms: float  # since the connection was accepted
    close: Closed | None = None

    @property
    def key(self) -> tuple[str, str, int, str]:
        if self.close is not None:
            return ("close", "", self.close.code, self.close.by)
        return (self.direction, self.type, 0, "")

    @property
    def short(self) -> str:
        """A table cell: `← connection_established 153 B · 1 ms`, `✕ 1000 'main cleanup' by server · 51 ms`."""
        c = self.close
        if c is not None:
            reason = f" '{sanitize.one_line(c.reason)}'" if c.reason else ""
            return f"✕ {c.code}{reason} by {c.by} · {self.ms:.0f} ms"
        arrow = "←" if self.direction == "in" else "→"
        return f"{arrow} {sanitize.one_line(self.type)} {self.size} B · {self.ms:.0f} ms"

    def words(self, side: str) -> str:
        """What this side had, as a clause: "B received error", "B's server closed 1000 'main cleanup'"."""
        c = self.close
        if c is not None:
            reason = f" '{sanitize.one_line(c.reason)}'" if c.reason else " (no reason)"
            if c.by == "server":
                return f"{side}'s server closed {c.code}{reason}"
            if c.by == "client":
                return f"{side} closed {c.code}{reason} itself"
            return f"{side}'s connection dropped ({c.code})"
        verb = "received" if self.direction == "in" else "sent"
        return f"{side} {verb} {sanitize.one_line(self.type)}"


def _words(item: WireItem | None, side: str) -> str:
    return item.words(side) if item is not None else f"{side} had nothing more"


def _frame_kind(data: str | bytes, type_field: str) -> str:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return "binary"
    value = parse_json(data) if len(data) <= _PARSE_MAX else None
    if value is None:
        return "text"
    t = frame_type(value, type_field)
    if t is None:
        return "json"
    return t if len(t) <= _TYPE_CHARS else t[: _TYPE_CHARS - 1] + "…"


def wire_items(entries: Iterable[tuple[str | None, Frame | Closed]], type_field: str = "type") -> list[WireItem]:
    """(stage, Frame or Closed) pairs, in order, as compared items (each frame's type read here, lazily)."""
    out: list[WireItem] = []
    for n, (stage, e) in enumerate(entries):
        if isinstance(e, Closed):
            out.append(WireItem(n, stage, "close", "close", 0, e.after_ms, e))
        else:
            out.append(WireItem(n, stage, e.direction, _frame_kind(e.data, type_field), e.size, e.ms))
    return out


class WireLog:
    """Per probe, the frames and closes of its latest run in order (the first `cap`), each with the stage running
    when it passed. A bus listener like `RunModel.apply`: feed it the same events (live or from a recording).
    A probe that starts again starts afresh."""

    def __init__(self, cap: int = MAX_FRAMES) -> None:
        self.cap = cap
        self.entries: dict[str, list[tuple[str | None, Frame | Closed]]] = {}
        self.seen: dict[str, int] = {}  # frames and closes of the probe's latest run, all of them
        self._stage: dict[str, str | None] = {}

    def apply(self, event: AnyEvent) -> None:
        if type(event) is Frame:
            self._add(event.probe_id, event)
        elif isinstance(event, Closed):
            self._add(event.probe_id, event)
        elif isinstance(event, StageStarted):
            self._stage[event.probe_id] = event.stage
        elif isinstance(event, ProbeStarted):
            self.entries[event.probe_id] = []
            self.seen[event.probe_id] = 0
            self._stage[event.probe_id] = None

    def apply_all(self, events: Iterable[AnyEvent]) -> None:
        for event in events:
            self.apply(event)

    def _add(self, probe_id: str, e: Frame | Closed) -> None:
        kept = self.entries.setdefault(probe_id, [])
        self.seen[probe_id] = self.seen.get(probe_id, 0) + 1
        if len(kept) < self.cap:
            kept.append((self._stage.get(probe_id), e))

    def items(self, probe_id: str, type_field: str = "type") -> list[WireItem]:
        return wire_items(self.entries.get(probe_id, ()), type_field)


def model_items(probe: ProbeModel, type_field: str = "type") -> list[WireItem]:
    """What the model alone keeps of a probe's wire (its last frames before the first close, and its closes):
    the comparison without a `WireLog` (a watch's round snapshots, a live model)."""
    entries: list[tuple[float, Frame | Closed]] = [(f.t, f) for f in probe.last_frames]
    entries += [(c.t, c) for c in probe.closes]
    entries.sort(key=lambda pair: pair[0])
    return wire_items(((None, e) for _, e in entries), type_field)


# --- the diff ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RunSide:
    """Which run a side is: where it came from and what it came to."""

    label: str  # e.g. "ok.jsonl", "ok.jsonl round 2", "live"
    target: str = ""
    started_at: float | None = None  # epoch seconds
    verdict: str = ""
    round: int | None = None  # the round picked (1-based), None: the latest result of each probe
    rounds: int = 1  # rounds in the recording (RunStarted events)
    build: str | None = None  # what health reported
    notes: tuple[str, ...] = ()  # what the reader should know (older parts left out, a truncated last line, …)

    def line(self) -> str:
        """`ok.jsonl · sandbox · 2026-12-01 05:08:38 UTC · verdict pass` (sanitised)."""
        parts = [self.label]
        if self.round is None and self.rounds > 1:
            parts.append(f"latest of {self.rounds} rounds")
        elif self.round is not None:
            parts.append(f"round {self.round} of {self.rounds}")
        if self.target:
            parts.append(self.target)
        if self.started_at is not None:
            parts.append(datetime.fromtimestamp(self.started_at, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))
        if self.build:
            parts.append(f"build {self.build}")
        if self.verdict:
            parts.append(f"verdict {self.verdict}")
        return sanitize.one_line(" · ".join(parts))


@dataclass(frozen=True, slots=True)
class StageDiff:
    name: str
    a: StageModel | None
    b: StageModel | None

    @property
    def status_a(self) -> str:
        return self.a.status if self.a is not None else "—"

    @property
    def status_b(self) -> str:
        return self.b.status if self.b is not None else "—"

    @property
    def differs(self) -> bool:
        return self.status_a != self.status_b

    @property
    def delta_ms(self) -> float | None:
        """B − A, when both ran the stage (a skipped stage has no duration to compare)."""
        a, b = self.a, self.b
        if a is None or b is None or a.duration_ms is None or b.duration_ms is None:
            return None
        if a.status in ("skip", "queued", "running") or b.status in ("skip", "queued", "running"):
            return None
        return b.duration_ms - a.duration_ms


@dataclass(frozen=True, slots=True)
class Divergence:
    """The first place the two runs part: a frame/close row (`index`) or, with no such row, a stage's status."""

    stage: str | None
    index: int | None  # the row of `ProbeDiff.rows`; None: the divergence is a stage's status
    a: WireItem | None = None
    b: WireItem | None = None
    words: str = ""  # "B's server closed 1000 'main cleanup' where A received connection_established" (sanitised)


@dataclass(slots=True)
class ProbeDiff:
    id: str
    name: str
    a: ProbeModel | None
    b: ProbeModel | None
    stages: list[StageDiff] = field(default_factory=list)
    rows: list[tuple[WireItem | None, WireItem | None]] = field(default_factory=list)
    frame_divergence: int | None = None  # the first row whose keys differ
    divergence: Divergence | None = None  # the first divergence of the probe (frames or stages)
    seen_a: int = 0  # frames and closes seen on each side (all of them; `rows` holds at most MAX_FRAMES)
    seen_b: int = 0
    partial: bool = False  # a side had no WireLog: only the model's last frames before the close were compared
    headline: str = ""

    @property
    def status_a(self) -> str:
        return _status(self.a)

    @property
    def status_b(self) -> str:
        return _status(self.b)

    @property
    def status_differs(self) -> bool:
        return self.status_a != self.status_b

    @property
    def capped(self) -> bool:
        return max(self.seen_a, self.seen_b) > MAX_FRAMES

    @property
    def close_a(self) -> Closed | None:
        return self.a.close if self.a is not None else None

    @property
    def close_b(self) -> Closed | None:
        return self.b.close if self.b is not None else None

    @property
    def close_differs(self) -> bool:
        a, b = self.close_a, self.close_b
        return (None if a is None else (a.code, a.by)) != (None if b is None else (b.code, b.by))

    @property
    def diagnoses_a(self) -> list[str]:
        return _codes(self.a)

    @property
    def diagnoses_b(self) -> list[str]:
        return _codes(self.b)

    @property
    def differs(self) -> bool:
        """Anything but timings and sizes differs: status, a stage's status, frames, the close, diagnoses."""
        return (self.status_differs or self.divergence is not None or self.close_differs
                or self.diagnoses_a != self.diagnoses_b)


@dataclass(slots=True)
class RunDiff:
    a: RunSide
    b: RunSide
    probes: list[ProbeDiff] = field(default_factory=list)
    first: ProbeDiff | None = None  # the first probe (queue order) that differs
    summary: str = ""  # one line naming the first probe and stage that diverge (sanitised)

    @property
    def status_differs(self) -> bool:
        """Some probe's status differs: `stagewatch diff` exits 1."""
        return any(p.status_differs for p in self.probes)


def _status(p: ProbeModel | None) -> str:
    if p is None:
        return "absent"
    return "running" if p.status in ("queued", "running") else p.status


def _codes(p: ProbeModel | None) -> list[str]:
    return [str(d.get("code", "")) for d in p.diagnoses] if p is not None else []


def _verdict_words(p: ProbeModel | None) -> str:
    if p is None:
        return "absent"
    status = _status(p)
    if status in ("fail", "error"):
        failed = p.failed_stage or (p.failed.name if p.failed is not None else None)
        return f"{status.upper()} at {sanitize.one_line(failed)}" if failed else status.upper()
    return status


def _merge(first: Iterable[str], second: Iterable[str]) -> list[str]:
    out = list(dict.fromkeys(first))
    out += [x for x in dict.fromkeys(second) if x not in out]
    return out


def diff_probe(a: ProbeModel | None, b: ProbeModel | None, items_a: Sequence[WireItem] | None = None,
               items_b: Sequence[WireItem] | None = None, *, seen_a: int | None = None, seen_b: int | None = None,
               type_field: str = "type") -> ProbeDiff:
    """One probe A vs B. `items_*`: its frames and closes (`WireLog.items`); None: what the model keeps
    (`model_items`, the last frames before the close), and the diff is marked partial."""
    some = a if a is not None else b
    assert some is not None, "a probe present in neither run"
    partial = (items_a is None and a is not None) or (items_b is None and b is not None)
    ia = list(items_a if items_a is not None else (model_items(a, type_field) if a is not None else []))
    ib = list(items_b if items_b is not None else (model_items(b, type_field) if b is not None else []))
    ia, ib = ia[:MAX_FRAMES], ib[:MAX_FRAMES]
    d = ProbeDiff(some.id, (a.name if a is not None and a.name else some.name), a, b, partial=partial,
                  seen_a=len(ia) if seen_a is None else seen_a, seen_b=len(ib) if seen_b is None else seen_b)
    order = _merge(a.stages if a is not None else (), b.stages if b is not None else ())
    d.stages = [StageDiff(name, a.stages.get(name) if a else None, b.stages.get(name) if b else None)
                for name in order]
    rank = {name: k for k, name in enumerate(order)}
    d.rows = [(ia[k] if k < len(ia) else None, ib[k] if k < len(ib) else None) for k in range(max(len(ia), len(ib)))]
    d.frame_divergence = next((k for k, (x, y) in enumerate(d.rows)
                               if x is None or y is None or x.key != y.key), None)
    frame_div: Divergence | None = None
    if d.frame_divergence is not None:
        x, y = d.rows[d.frame_divergence]
        known = [s.stage for s in (x, y) if s is not None and s.stage is not None]
        # The later of the two stages: the runs part where the later one looked (a frame that came early is the
        # same frame; what the other side had instead shows in the stage that waited for it).
        stage = max(known, key=lambda s: rank.get(s, -1)) if known else None
        frame_div = Divergence(stage, d.frame_divergence, x, y, f"{_words(y, 'B')} where {_words(x, 'A')}")
    stage_diff = next((s for s in d.stages if s.differs), None)
    if stage_diff is not None and (frame_div is None or frame_div.stage is None
                                   or rank.get(stage_diff.name, 0) < rank.get(frame_div.stage, 0)):
        d.divergence = Divergence(stage_diff.name, None, words=_stage_words(stage_diff))
    else:
        d.divergence = frame_div
    d.headline = _headline(d)
    return d


def _stage_words(s: StageDiff) -> str:
    """ "handshake: A pass, B fail — <B's detail>" (the failing side's detail)."""
    failing = s.b if s.b is not None and s.b.failed else s.a if s.a is not None and s.a.failed else s.b or s.a
    detail = sanitize.one_line(failing.detail) if failing is not None and failing.detail else ""
    if len(detail) > 160:
        detail = detail[:159] + "…"
    return (f"{sanitize.one_line(s.name)}: A {s.status_a}, B {s.status_b}"
            + (f" — {'B' if failing is s.b else 'A'}: {detail}" if detail else ""))


def _headline(d: ProbeDiff) -> str:
    head = f"{sanitize.one_line(d.id)}: A {_verdict_words(d.a)}, B {_verdict_words(d.b)}"
    if d.a is None or d.b is None:
        return head
    if d.divergence is not None:
        where = f" at {sanitize.one_line(d.divergence.stage)}" if d.divergence.stage and d.divergence.index is not None \
            else ""
        return f"{head} — first divergence{where}: {d.divergence.words}"
    if d.close_differs:
        return f"{head} — same frames, another close"
    if d.diagnoses_a != d.diagnoses_b:
        return f"{head} — same stages and frames, other diagnoses"
    slowest = max((s for s in d.stages if s.delta_ms is not None), key=lambda s: abs(s.delta_ms or 0.0),
                  default=None)
    if slowest is not None and slowest.delta_ms is not None and abs(slowest.delta_ms) >= 0.05:
        return (f"{head} — no divergence (largest timing change: {sanitize.one_line(slowest.name)} "
                f"{slowest.delta_ms:+.1f} ms)")
    return f"{head} — no divergence"


def _diff(side_a: RunSide, side_b: RunSide, probes_a: Mapping[str, ProbeModel], probes_b: Mapping[str, ProbeModel],
          order: Sequence[str], wire_a: WireLog | None, wire_b: WireLog | None, probe: str | None,
          type_field: str) -> RunDiff:
    ids = [probe] if probe is not None else list(order)
    if probe is not None and probe not in probes_a and probe not in probes_b:
        known = ", ".join(sorted(set(probes_a) | set(probes_b))) or "none"
        raise DiffError(f"no probe {probe!r} in either run (probes: {known})")
    out = RunDiff(side_a, side_b)
    for pid in ids:
        a, b = probes_a.get(pid), probes_b.get(pid)
        if a is None and b is None:
            continue
        out.probes.append(diff_probe(
            a, b, wire_a.items(pid, type_field) if wire_a is not None and a is not None else None,
            wire_b.items(pid, type_field) if wire_b is not None and b is not None else None,
            seen_a=wire_a.seen.get(pid, 0) if wire_a is not None and a is not None else None,
            seen_b=wire_b.seen.get(pid, 0) if wire_b is not None and b is not None else None,
            type_field=type_field))
    out.first = next((p for p in out.probes if p.differs), None)
    out.summary = _summary(out)
    return out


def _summary(d: RunDiff) -> str:
    first = d.first
    if first is None:
        return (f"no divergence: {len(d.probes)} probe{'s' if len(d.probes) != 1 else ''} alike in status, stages, "
                "frames, close and diagnoses")
    changed = sum(p.status_differs for p in d.probes)
    n = len(d.probes)
    counts = (f" ({changed} of {n} probe{'s' * (n != 1)} {'differs' if changed == 1 else 'differ'} in status)"
              if changed else " (no status differs)")
    div = first.divergence
    name = sanitize.one_line(first.id)
    if div is not None:
        where = f" at {sanitize.one_line(div.stage)}" if div.stage else ""
        return f"first divergence: {name}{where} — {div.words}{counts}"
    if first.a is None or first.b is None:
        return f"first divergence: {name} — only in {'B' if first.a is None else 'A'}{counts}"
    return f"first divergence: {name} — {first.headline.split(' — ', 1)[-1]}{counts}"


def diff_models(a: RunModel, b: RunModel, *, wire_a: WireLog | None = None, wire_b: WireLog | None = None,
                side_a: RunSide | None = None, side_b: RunSide | None = None, probe: str | None = None,
                type_field: str = "type") -> RunDiff:
    """Compare two runs, each probe's latest result (in A's queue order, then B's other probes). Give each side
    the `WireLog` fed the same events to compare every frame; without one, the model's last frames are compared.
    `probe`: only that one (DiffError if neither run has it)."""
    order = _merge((p.id for p in a.ordered() if p.runs), (p.id for p in b.ordered() if p.runs))
    return _diff(side_a or _model_side(a, "A"), side_b or _model_side(b, "B"),
                 {p.id: p for p in a.ordered() if p.runs}, {p.id: p for p in b.ordered() if p.runs},
                 order, wire_a, wire_b, probe, type_field)


def diff_rounds(history: History, round_a: int, round_b: int, *, probe: str | None = None,
                type_field: str = "type") -> RunDiff:
    """Compare two rounds of a watch a `History` still keeps whole (its last `keep_rounds`). The rounds keep the
    last frames before each probe's close, not every frame: the frames compared are those."""
    sides, maps = [], []
    for n in (round_a, round_b):
        rnd = history.round(n)
        if rnd is None:
            first = history.rounds[0].n if history.rounds else 0
            raise DiffError(f"round {n}: not kept (rounds {first}–{history.total_rounds})" if history.rounds
                            else f"round {n}: no round yet")
        if rnd.detail is None:
            raise DiffError(f"round {n}: kept as a summary only (the last {history.keep_rounds} rounds are kept "
                            "whole)")
        maps.append(rnd.detail)
        sides.append(RunSide(f"round {n}", started_at=rnd.started_at, verdict=rnd.verdict or "running", round=n,
                             rounds=history.total_rounds, build=rnd.build))
    order = _merge(maps[0], maps[1])
    return _diff(sides[0], sides[1], maps[0], maps[1], order, None, None, probe, type_field)


def _model_side(model: RunModel, label: str) -> RunSide:
    return RunSide(label, model.target, None if model.wall0 is None else model.wall0 + model.started_t,
                   model.verdict, None, model.runs or 1, model.version)


# --- reading a recording ------------------------------------------------------------------------------------------
class LoadedRun(NamedTuple):
    model: RunModel
    wire: WireLog
    side: RunSide


def load_run(path: str | Path, round: int | None = None, label: str | None = None) -> LoadedRun:
    """A recording folded for a diff: its `RunModel` (each probe's latest result, or one round's with `round`,
    1-based, rounds delimited by RunStarted), the `WireLog` of the same events, and its `RunSide`. Raises
    `probes.recording.RecordingError` when the file cannot be read as a recording, `DiffError` for a round it does
    not have or a recording with no run in it."""
    p = Path(path)
    rec = read_recording(p)
    starts = [k for k, e in enumerate(rec.events) if isinstance(e, RunStarted)]
    shown = label or p.name
    if not starts:
        raise DiffError(f"{p}: no run in this recording")
    if round is None:
        events: Sequence[AnyEvent] = rec.events
    elif not 1 <= round <= len(starts):
        raise DiffError(f"{p}: no round {round} (the recording has {len(starts)} round{'s' * (len(starts) != 1)})")
    else:
        end = starts[round] if round < len(starts) else len(rec.events)
        events = rec.events[starts[round - 1]:end]
    model, wire = RunModel(), WireLog()
    for event in events:
        model.apply(event)
        wire.apply(event)
    notes: list[str] = []
    if rec.version > RECORDING_VERSION:
        notes.append(f"a version {rec.version} recording (this stagewatch reads {RECORDING_VERSION}): what it could")
    if rec.left_out:
        notes.append(f"{len(rec.left_out)} part file(s) left out (over the size budget or unreadable); rounds are "
                     "counted from the first part read")
    if rec.truncated:
        notes.append("its last line was cut short (the recorder stopped mid-write)")
    if rec.skipped:
        notes.append(f"{rec.skipped} malformed line(s) skipped")
    side = RunSide(shown, model.target, None if model.wall0 is None else model.wall0 + model.started_t,
                   model.verdict, round, len(starts), model.version, tuple(notes))
    return LoadedRun(model, wire, side)


def diff_recordings(path_a: str | Path, path_b: str | Path, *, round_a: int | None = None,
                    round_b: int | None = None, probe: str | None = None, type_field: str = "type") -> RunDiff:
    """`load_run` both, then `diff_models`: what `stagewatch diff` prints."""
    label_a, label_b = _labels(Path(path_a), Path(path_b))
    a = load_run(path_a, round_a, label_a)
    b = load_run(path_b, round_b, label_b)
    return diff_models(a.model, b.model, wire_a=a.wire, wire_b=b.wire, side_a=a.side, side_b=b.side, probe=probe,
                       type_field=type_field)


def _labels(a: Path, b: Path) -> tuple[str, str]:
    """File names, or paths where the names alone would not tell the two apart."""
    if a.name != b.name or a == b:
        return a.name, b.name
    return os.fspath(a), os.fspath(b)


# --- rendering --------------------------------------------------------------------------------------------------
_COLOURS = {"pass": "32", "fail": "31", "error": "31", "skip": "2", "absent": "33", "running": "33"}
_WINDOW_BEFORE, _WINDOW_AFTER = 3, 6  # frame rows shown around the first divergence
_SAME_ROWS = 12  # rows shown when the frames agree


def _c(text: str, code: str, color: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if color and code else text


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _delta(s: StageDiff) -> str:
    return "" if s.delta_ms is None else f"{s.delta_ms:+.1f}"


def _close_words(c: Closed | None) -> str:
    return "no WebSocket close" if c is None else sanitize.one_line(close_sentence(c.code, c.reason, c.by, c.after_ms))


def _codes_words(codes: list[str]) -> str:
    return ", ".join(sanitize.one_line(c) for c in codes) if codes else "none"


def _frames_note(p: ProbeDiff) -> str:
    note = f"A {p.seen_a}, B {p.seen_b} frames and closes"
    if p.capped:
        note += f"; the first {MAX_FRAMES} compared"
    if p.partial:
        note += f"; only the last {KEEP_FRAMES} frames before the close were kept to compare"
    return note


def _window(p: ProbeDiff) -> tuple[int, int]:
    if p.frame_divergence is None:
        return 0, min(len(p.rows), _SAME_ROWS)
    return max(0, p.frame_divergence - _WINDOW_BEFORE), min(len(p.rows), p.frame_divergence + _WINDOW_AFTER)


def _row_stage(a: WireItem | None, b: WireItem | None) -> str:
    """The stage a row passed in: one name, or `A's/B's` when the two sides were in different stages."""
    stages = list(dict.fromkeys(x.stage for x in (a, b) if x is not None and x.stage))
    return sanitize.one_line("/".join(stages))


def render_text(diff: RunDiff, color: bool = False) -> str:
    """The diff for a terminal: sides, the summary, a headline per probe, then per probe its stages side by side,
    the frames around the first divergence, close and diagnoses. Outside text made visible."""
    out = [f"A  {diff.a.line()}", f"B  {diff.b.line()}"]
    for side, name in ((diff.a, "A"), (diff.b, "B")):
        out += [f"   {name}: note: {sanitize.one_line(n)}" for n in side.notes]
    out += ["", _c(sanitize.one_line(diff.summary), "1" if diff.first is None else "1;31", color), ""]
    for p in diff.probes:
        mark = _c("≠", "31", color) if p.differs else "="
        out.append(f"{mark} {sanitize.one_line(p.headline)}")
    for p in diff.probes:
        out += ["", _c(f"── {sanitize.one_line(p.id)} · {sanitize.one_line(p.name)}", "1", color)]
        out.append(f"   A {_c(p.status_a, _COLOURS.get(p.status_a, ''), color)}   "
                   f"B {_c(p.status_b, _COLOURS.get(p.status_b, ''), color)}")
        width = max([5, *(len(sanitize.one_line(s.name)) for s in p.stages)])
        out.append(f"   {'stage':<{width}}  {'A':<7}{'ms':>8}   {'B':<7}{'ms':>8}  {'Δ ms':>8}")
        for s in p.stages:
            a_ms = _ms(s.a.duration_ms if s.a else None)
            b_ms = _ms(s.b.duration_ms if s.b else None)
            flag = _c("  ◀", "31", color) if s.differs else ""
            out.append(f"   {sanitize.one_line(s.name):<{width}}  "
                       f"{_c(f'{s.status_a:<7}', _COLOURS.get(s.status_a, ''), color)}{a_ms:>8}   "
                       f"{_c(f'{s.status_b:<7}', _COLOURS.get(s.status_b, ''), color)}{b_ms:>8}  "
                       f"{_delta(s):>8}{flag}")
        if not p.differs:
            out.append(f"   alike: frames ({_frames_note(p)}), close ({_close_words(p.close_a)}), diagnoses "
                       f"({_codes_words(p.diagnoses_a)})")
            continue
        out.append(f"   frames, aligned by order and type ({_frames_note(p)}):")
        if not p.rows:
            out.append("     none on either side")
        else:
            lo, hi = _window(p)
            cells = [(k, *p.rows[k]) for k in range(lo, hi)]
            cw = max([8, *(len(a.short) for _, a, _ in cells if a is not None)])
            sw = max([5, *(len(_row_stage(a, b)) for _, a, b in cells)])
            if lo:
                out.append(f"     … {lo} row{'s' * (lo != 1)} alike before")
            for k, a, b in cells:
                diverges = k == p.frame_divergence
                line = (f"   {_c('▶', '1;31', color) if diverges else ' '} {k:>4}  {_row_stage(a, b):<{sw}}  "
                        f"{(a.short if a else '—'):<{cw}}  {(b.short if b else '—')}")
                if diverges:
                    line += _c("  ◀ first divergence", "1;31", color)
                out.append(line)
            if hi < len(p.rows):
                more = len(p.rows) - hi
                out.append(f"     … {more} more row{'s' * (more != 1)}")
            if p.frame_divergence is None:
                out.append("     no divergence")
        out.append(f"   close      A: {_close_words(p.close_a)}")
        out.append(f"              B: {_close_words(p.close_b)}")
        diag = f"   diagnoses  A: {_codes_words(p.diagnoses_a)}   B: {_codes_words(p.diagnoses_b)}"
        out.append(_c(diag, "31", color) if p.diagnoses_a != p.diagnoses_b else diag)
    return "\n".join(out) + "\n"


_GLYPH = {"pass": "✅", "fail": "❌", "error": "⚠️", "skip": "⏭️", "absent": "—", "running": "…"}


def _md(text: str) -> str:
    return sanitize.one_line(text).replace("|", "\\|").replace("`", "ʼ")


def _md_status(p: ProbeModel | None) -> str:
    status = _status(p)
    failed = p.failed_stage if p is not None and status in ("fail", "error") else None
    return f"{_GLYPH.get(status, '')} {_md(status)}{f' at {_md(failed)}' if failed else ''}".strip()


def render_markdown(diff: RunDiff) -> str:
    """The diff to paste into an issue: the summary, a table of probes, then per probe that differs its stages,
    frames around the first divergence, close and diagnoses (probes alike: their stage timings, folded)."""
    out = ["## stagewatch diff", "", f"- **A:** {_md(diff.a.line())}", f"- **B:** {_md(diff.b.line())}"]
    for side, name in ((diff.a, "A"), (diff.b, "B")):
        out += [f"- *{name}: {_md(n)}*" for n in side.notes]
    out += ["", f"**{_md(diff.summary)}**", "", "| probe | A | B | first divergence |", "|---|---|---|---|"]
    for p in diff.probes:
        div = p.divergence
        where = "—"
        if div is not None:
            where = (f"{_md(div.stage)}: " if div.stage and div.index is not None else "") + _md(div.words)
        elif p.differs:
            where = _md(p.headline.split(" — ", 1)[-1])
        out.append(f"| {_md(p.id)} | {_md_status(p.a)} | {_md_status(p.b)} | {where} |")
    for p in diff.probes:
        stages = ["| stage | A | A ms | B | B ms | Δ ms |", "|---|---|---:|---|---:|---:|"]
        for s in p.stages:
            name = f"**{_md(s.name)}**" if s.differs else _md(s.name)
            stages.append(f"| {name} | {_md(s.status_a)} | {_ms(s.a.duration_ms if s.a else None)} | "
                          f"{_md(s.status_b)} | {_ms(s.b.duration_ms if s.b else None)} | {_delta(s)} |")
        if not p.differs:
            out += ["", f"<details><summary>{_md(p.headline)}</summary>", "", *stages, "", "</details>"]
            continue
        out += ["", f"### {_md(p.id)} ({_md(p.name)})", "", _md(p.headline), "", *stages, "",
                f"**Frames**, aligned by order and type ({_md(_frames_note(p))}):", ""]
        if not p.rows:
            out.append("none on either side")
        else:
            lo, hi = _window(p)
            out += ["| # | stage | A | B | |", "|---:|---|---|---|---|"]
            if lo:
                out.append(f"| … | | {lo} row{'s' * (lo != 1)} alike | | |")
            for k in range(lo, hi):
                a, b = p.rows[k]
                flag = "**◀ first divergence**" if k == p.frame_divergence else ""
                out.append(f"| {k} | {_md(_row_stage(a, b))} | {_md(a.short) if a else '—'} | "
                           f"{_md(b.short) if b else '—'} | {flag} |")
            if hi < len(p.rows):
                out.append(f"| … | | {len(p.rows) - hi} more | | |")
        out += ["", f"**Close:** A: {_md(_close_words(p.close_a))} · B: {_md(_close_words(p.close_b))}", "",
                f"**Diagnoses:** A: {_md(_codes_words(p.diagnoses_a))} · B: {_md(_codes_words(p.diagnoses_b))}"]
    return "\n".join(out) + "\n"
