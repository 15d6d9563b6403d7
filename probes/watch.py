"""The history of a watch: rounds of the queue folded into what a person watching a deploy asks — when did it
break, on which build, what failed first, how long was it down, is it back.

Monitor semantics (as mature uptime tools have them): a probe is UP after one pass, DEGRADED when it passes with
a stage slower than the threshold that stage announced, PENDING after a failure and DOWN after `confirm` failures
in a row. A probe not attempted because the target is unreachable counts as failed. Every change of state is a
`Flip`; a DOWN that ends is an `Outage`; every change of the build health reports is a `BuildSpan`.

`History` is fed by `RunModel` (probes/model.py) as it folds the stream, so the app, the printer, the reports and
replay all read the same history. Everything is bounded: rounds kept whole for the last `keep_rounds`, as
summaries for the last `keep_summaries`, and capped lists of flips, outages, builds and timeline entries.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any



if TYPE_CHECKING:
    from .model import ProbeModel

UNREACHABLE = "target-unreachable"  # the diagnosis code of a probe not attempted because nothing listens
STATES = ("UP", "DEGRADED", "PENDING", "DOWN")
KEEP_EVENTS = 2000  # flips, outages, builds and timeline entries kept (the newest)
BURST_S = 5.0  # held sessions ending (or coming back) within this of the first share one timeline line
KEEP_LATENCIES = 240  # per probe and stage: the durations of the last rounds, for sparklines and percentiles


@dataclass(frozen=True, slots=True)
class ProbeRound:
    """One probe in one round, in a line: the cell of its history strip and what the monitor made of it."""
    cell: str  # pass, degraded, fail, skip (not run)
    state: str | None  # the monitor's state after this round (None: not run and no state yet)
    stage: str | None = None  # the failing stage (or the slow one, when degraded)
    diagnosis: str | None = None  # the first diagnosis code


@dataclass(slots=True)
class Round:
    n: int
    started_at: float  # epoch seconds
    finished_at: float | None = None
    build: str | None = None  # what health reported this round (None: no answer)
    verdict: str | None = None  # pass, fail, interrupted; None while running
    probes: dict[str, ProbeRound] = field(default_factory=dict)
    detail: dict[str, ProbeModel] | None = field(default_factory=dict)  # whole probes; None once summarised

    def record(self) -> dict[str, Any]:
        """The report contract's round: {n, started_at, finished_at, build, verdict, probes: {ID: status}}."""
        return {"n": self.n, "started_at": iso(self.started_at), "finished_at": iso(self.finished_at),
                "build": self.build, "verdict": self.verdict,
                "probes": {pid: p.cell for pid, p in self.probes.items()},
                "states": {pid: p.state for pid, p in self.probes.items() if p.state}}


@dataclass(frozen=True, slots=True)
class Flip:
    at: float
    probe: str
    before: str | None  # None: the first state seen
    after: str
    round: int
    stage: str | None = None
    diagnosis: str | None = None
    build: str | None = None

    @property
    def alerting(self) -> bool:
        """Worth a bell: DOWN or DEGRADED, and UP again after either (not PENDING, not a blip that ended PENDING,
        not the first UP)."""
        return self.after in ("DOWN", "DEGRADED") or (self.after == "UP" and self.before in ("DOWN", "DEGRADED"))

    def record(self) -> dict[str, Any]:
        return {"at": iso(self.at), "probe": self.probe, "from": self.before, "to": self.after, "round": self.round,
                "stage": self.stage, "diagnosis": self.diagnosis, "build": self.build}


@dataclass(slots=True)
class Outage:
    probe: str
    start: float
    first_round: int
    first_stage: str | None
    first_diagnosis: str | None
    end: float | None = None
    rounds: int = 0  # failing rounds
    builds: list[str] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)  # every distinct cause seen, in order ('code at stage')

    @property
    def duration_s(self) -> float | None:
        return None if self.end is None else round(self.end - self.start, 3)

    def record(self) -> dict[str, Any]:
        return {"probe": self.probe, "start": iso(self.start), "end": iso(self.end), "duration_s": self.duration_s,
                "rounds": self.rounds, "first_stage": self.first_stage, "first_diagnosis": self.first_diagnosis,
                "causes": list(self.causes), "builds": list(self.builds)}


@dataclass(slots=True)
class BuildSpan:
    build: str
    first_seen: float
    last_seen: float
    first_round: int

    def record(self) -> dict[str, Any]:
        return {"build": self.build, "first_seen": iso(self.first_seen), "last_seen": iso(self.last_seen),
                "first_round": self.first_round}


@dataclass(frozen=True, slots=True)
class Change:
    """A line of the timeline: a flip or a build change, said in words. Probes that flip alike in one round (the
    same state, stage and cause) share one line."""
    at: float
    kind: str  # down, up, degraded, pending, build; drop, back (held sessions)
    probes: tuple[str, ...]  # empty for a build change
    tail: str  # what happened, after the probes' names
    round: int = 0

    @property
    def probe(self) -> str | None:
        return self.probes[0] if self.probes else None

    @property
    def text(self) -> str:
        if not self.probes:
            return self.tail
        names = ", ".join(self.probes[:3]) + (f" +{len(self.probes) - 3}" if len(self.probes) > 3 else "")
        return f"{names} {self.tail}"


def iso(wall: float | None) -> str | None:
    if wall is None:
        return None
    from datetime import datetime, timezone
    return datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="milliseconds")


def duration_words(seconds: float) -> str:
    """'2 m 28 s', '41 s', '1 h 03 m'."""
    s = int(round(seconds))
    if s < 60:
        return f"{max(seconds, 0):.1f} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60} m {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} m"


def percentile(values: Iterable[float], q: float) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass(slots=True)
class _Monitor:
    state: str | None = None
    fails: int = 0
    outage: Outage | None = None  # open (maybe not confirmed yet: while PENDING)
    cause: str | None = None  # what the last failing round said ('code at stage')
    build: str | None = None  # the build when the probe last settled (UP, DEGRADED or DOWN)


class History:
    """Rounds, monitor states, flips, outages and builds of a session. Fed by `RunModel`."""

    def __init__(self, confirm: int = 2, keep_rounds: int = 100, keep_summaries: int = 20_000) -> None:
        self.confirm = max(1, confirm)
        self.keep_rounds = max(1, keep_rounds)
        self.rounds: deque[Round] = deque(maxlen=max(keep_summaries, self.keep_rounds))
        self.flips: deque[Flip] = deque(maxlen=KEEP_EVENTS)
        self.outages: deque[Outage] = deque(maxlen=KEEP_EVENTS)
        self.builds: deque[BuildSpan] = deque(maxlen=KEEP_EVENTS)
        self.timeline: deque[Change] = deque(maxlen=KEEP_EVENTS)
        self.latencies: dict[tuple[str, str], deque[float]] = {}
        self.monitors: dict[str, _Monitor] = {}
        self.total_rounds = 0
        self.first_started: float | None = None  # epoch seconds: when the first round started
        self.failed_rounds = 0
        self.new_flips: list[Flip] = []  # since the last `take_flips()`: what a live front end alerts on
        self.build_reachable = True  # did health report the build in the last finished round
        self._with_detail: deque[Round] = deque()
        self._burst: dict[str, float] = {}  # the counts of the last session-change timeline line
        self._results: dict[ProbeRound, ProbeRound] = {}
        self._patterns: dict[tuple[tuple[str, ProbeRound], ...], dict[str, ProbeRound]] = {}

    def _shared(self, result: ProbeRound) -> ProbeRound:
        """One object per distinct result (a watch repeats the same few thousands of times)."""
        shared = self._results.setdefault(result, result)
        if len(self._results) > 10_000:
            self._results.clear()
        return shared

    def configure(self, confirm: int | None = None, keep_rounds: int | None = None) -> None:
        if confirm is not None:
            self.confirm = max(1, confirm)
        if keep_rounds is not None:
            self.keep_rounds = max(1, keep_rounds)

    # --- folding (called by RunModel) ---------------------------------------------------------------------------
    def round_started(self, wall: float) -> None:
        if self.first_started is None:
            self.first_started = wall
        self.total_rounds += 1
        self.rounds.append(Round(self.total_rounds, wall))
        self._with_detail.append(self.rounds[-1])
        while len(self._with_detail) > self.keep_rounds:
            self._with_detail.popleft().detail = None  # older rounds are kept as their summaries

    @property
    def current(self) -> Round | None:
        return self.rounds[-1] if self.rounds else None

    def sessions_changed(self, probe: str, change: str, code: int | None, at: float, reconnect_ms: float | None,
                         build: str | None) -> None:
        """A held session ended or came back (a hold beside the rounds): one timeline line per burst, counted
        ('held: 18 sessions ended 1012, 2 dropped 1006' / 'held: 20 sessions back on v2, slowest 1.1 s')."""
        kind = "drop" if change == "ended" else "back"
        last = self.timeline[-1] if self.timeline else None
        burst = last is not None and last.kind == kind and last.probes == (probe,) and at - last.at <= BURST_S
        counts: dict[str, float] = dict(self._burst) if burst else {}
        if kind == "drop":
            key = "1006 dropped" if (code or 1006) == 1006 else f"{code} closed"
            counts[key] = counts.get(key, 0) + 1
            tail = "sessions ended: " + ", ".join(f"{int(n)} × {k}" for k, n in sorted(counts.items()))
        else:
            counts["n"] = counts.get("n", 0) + 1
            counts["slowest"] = max(counts.get("slowest", 0.0), reconnect_ms or 0.0)
            tail = f"{int(counts['n'])} sessions back" + (f" on {build}" if build else "") + (
                f", slowest after {counts['slowest'] / 1000:.1f} s" if counts["slowest"] else "")
        self._burst = counts
        if burst:
            assert last is not None
            self.timeline.pop()
            self.timeline.append(Change(last.at, kind, (probe,), tail, last.round))
        else:  # between rounds, the line belongs to the next one (the last one's lines are already told)
            rnd = self.current
            n = self.total_rounds if rnd is not None and rnd.finished_at is None else self.total_rounds + 1
            self.timeline.append(Change(at, kind, (probe,), tail, n))

    def build_seen(self, build: str, wall: float) -> None:
        rnd = self.current
        if rnd is None:
            return
        last = self.builds[-1] if self.builds else None
        if last is not None and last.build == build:
            rnd.build = last.build  # one string for every round of a build
            last.last_seen = wall
            return
        rnd.build = build
        self.builds.append(BuildSpan(build, wall, wall, rnd.n))
        if last is not None:
            self.timeline.append(Change(wall, "build", (), f"build {last.build} → {build}", rnd.n))
        for mon in self.monitors.values():
            if mon.outage is not None and build not in mon.outage.builds:
                mon.outage.builds.append(build)

    def probe_finished(self, probe: ProbeModel, wall: float, snapshot: ProbeModel,
                       started: float | None = None) -> None:
        """Fold a finished probe. `wall` is when it finished (when the change was learned); `started` when it
        began: an outage runs from the start of its first failing run to the start of the first passing one."""
        rnd = self.current
        if rnd is None:
            return
        began = wall if started is None else started
        if rnd.detail is not None:
            rnd.detail[probe.id] = snapshot
        for stage in probe.stages.values():
            if stage.status == "pass" and stage.duration_ms is not None:
                key = (probe.id, stage.name)
                series = self.latencies.get(key)
                if series is None:
                    series = self.latencies[key] = deque(maxlen=KEEP_LATENCIES)
                series.append(stage.duration_ms)
        cell, stage_name, code, note = _cell(probe)
        mon = self.monitors.setdefault(probe.id, _Monitor())
        if cell == "skip":
            rnd.probes[probe.id] = self._shared(ProbeRound(cell, mon.state))
            return
        before = mon.state
        cause = cause_words(stage_name, code)
        if cell == "fail":
            mon.fails += 1
            after = "DOWN" if mon.fails >= self.confirm or before == "DOWN" else "PENDING"
            if mon.outage is None:
                known = rnd.build or (self.builds[-1].build if self.builds else None)
                mon.outage = Outage(probe.id, began, rnd.n, stage_name, code, builds=[known] if known else [])
            elif cause != mon.cause and after == before:  # still failing, for another reason: say so
                self._add(Change(wall, "cause", (probe.id,), f"still {before} — now {cause}"
                                 f"{self._builds(mon.build, rnd.build)}", rnd.n))
            if cause not in mon.outage.causes:
                mon.outage.causes.append(cause)
            mon.cause = cause
            mon.outage.rounds += 1
            if after == "DOWN" and before != "DOWN":
                self.outages.append(mon.outage)
        else:
            mon.fails, mon.cause = 0, None
            after = "DEGRADED" if cell == "degraded" else "UP"
            if mon.outage is not None:
                if before == "DOWN":
                    mon.outage.end = began
                mon.outage = None
        mon.state = after
        rnd.probes[probe.id] = self._shared(ProbeRound(cell, after, stage_name, code))
        if after != before:
            flip = Flip(wall, probe.id, before, after, rnd.n, stage_name, code, rnd.build)
            self.flips.append(flip)
            self.new_flips.append(flip)
            self._tell(flip, mon, note)
            if after != "PENDING":
                mon.build = rnd.build or mon.build

    def _tell(self, flip: Flip, mon: _Monitor, note: str) -> None:
        if flip.before is None and flip.after == "UP":
            return  # the first state seen, and all is well: nothing changed that a person needs to read
        self._add(Change(flip.at, flip.after.lower(), (flip.probe,), self._flip_words(flip, mon, note), flip.round))

    def _add(self, change: Change) -> None:
        """A timeline line; probes that changed alike in the same round share the last line."""
        last = self.timeline[-1] if self.timeline else None
        if last is not None and last.probes and (last.round, last.kind, last.tail) == (
                change.round, change.kind, change.tail):
            self.timeline.pop()
            change = Change(last.at, last.kind, (*last.probes, *change.probes), last.tail, last.round)
        self.timeline.append(change)

    def round_finished(self, verdict: str, wall: float) -> None:
        rnd = self.current
        if rnd is None:
            return
        rnd.verdict, rnd.finished_at = verdict, wall
        # Rounds alike share one summary: a watch repeats the same few outcomes, so long watches stay flat.
        rnd.probes = self._patterns.setdefault(tuple(rnd.probes.items()), rnd.probes)
        if len(self._patterns) > 10_000:
            self._patterns.clear()
        self.failed_rounds += verdict == "fail"
        self.build_reachable = rnd.build is not None or not self.builds  # else the build shown is stale

    # --- reading ------------------------------------------------------------------------------------------------
    def take_flips(self) -> list[Flip]:
        flips, self.new_flips = self.new_flips, []
        return flips

    def state(self, probe_id: str) -> str | None:
        mon = self.monitors.get(probe_id)
        return mon.state if mon else None

    def open_outages(self) -> list[Outage]:
        return [o for o in self.outages if o.end is None]

    def round(self, n: int) -> Round | None:
        if not self.rounds or n < self.rounds[0].n or n > self.rounds[-1].n:
            return None
        return self.rounds[n - self.rounds[0].n]

    def cells(self, probe_id: str, last: int) -> list[tuple[int, str]]:
        """(round n, cell) of the last `last` rounds for a history strip; 'none' where the probe did not run."""
        out: list[tuple[int, str]] = []
        for rnd in _tail(self.rounds, last):
            p = rnd.probes.get(probe_id)
            out.append((rnd.n, p.cell if p else "none"))
        return out

    def latency(self, probe_id: str, stage: str) -> tuple[list[float], float | None, float | None]:
        """The stage's durations over the last rounds, with p50 and p95."""
        series = list(self.latencies.get((probe_id, stage), ()))
        return series, percentile(series, 0.5), percentile(series, 0.95)

    def changes(self, n: int) -> list[Change]:
        """The timeline entries of round `n`, in order."""
        out: list[Change] = []
        for change in reversed(self.timeline):
            if change.round < n:
                break
            if change.round == n:
                out.append(change)
        return out[::-1]

    def builds_between(self, start: float, end: float | None) -> list[str]:
        return [b.build for b in self.builds if b.last_seen >= start and (end is None or b.first_seen <= end)]

    def report(self) -> dict[str, Any]:
        """The JSON report's watch keys."""
        return {"rounds": [r.record() for r in self.rounds], "flips": [f.record() for f in self.flips],
                "outages": [o.record() for o in self.outages], "builds": [b.record() for b in self.builds]}

    # --- words --------------------------------------------------------------------------------------------------
    def _flip_words(self, flip: Flip, mon: _Monitor, note: str) -> str:
        """What happened, after the probe's name: 'DOWN at ready — closed-before-ready (build v1 → v2)'."""
        builds = self._builds(mon.build, flip.build)
        if flip.diagnosis == UNREACHABLE:
            return f"{flip.after} — not attempted: target unreachable"
        if flip.after in ("DOWN", "PENDING"):
            why = f" — {flip.diagnosis}" if flip.diagnosis else ""
            at = f" at {flip.stage}" if flip.stage else ""
            return f"{flip.after}{at}{why}{builds}"
        if flip.after == "DEGRADED":
            return f"DEGRADED — {note or f'{flip.stage} slower than its threshold'}{builds}"
        ended = next((o for o in reversed(self.outages) if o.probe == flip.probe and o.end is not None
                      and o.first_round <= flip.round and o is not mon.outage), None)
        if flip.before == "DOWN" and ended is not None and ended.duration_s is not None:
            return (f"UP — outage {duration_words(ended.duration_s)}, {ended.rounds} "
                    f"round{'s' if ended.rounds != 1 else ''}{builds}")
        return f"UP{builds}"

    @staticmethod
    def _builds(before: str | None, now: str | None) -> str:
        """'(build v1 → v2)' when the build changed since the probe last settled, else '(build v2)'."""
        if not now:
            return ""
        return f" (build {before} → {now})" if before and before != now else f" (build {now})"


def _tail(rounds: deque[Round], last: int) -> Iterator[Round]:
    start = max(0, len(rounds) - last)
    for i in range(start, len(rounds)):
        yield rounds[i]


def _cell(probe: ProbeModel) -> tuple[str, str | None, str | None, str]:
    """pass / degraded / fail / skip, the stage that says why, the first diagnosis code, and for a slow stage
    its figures ('agent 1503 ms, over 1000 ms')."""
    code = str(probe.diagnoses[0].get("code")) if probe.diagnoses else None
    stopped = probe.failed is not None and probe.failed.status == "error" and probe.failed.detail == "interrupted"
    if probe.status == "error" and ((probe.failed is None and probe.current_stage is not None) or stopped):
        return "skip", None, None, ""  # interrupted mid-stage (Ctrl-C, a rerun, q): it did not fail, it was stopped
    if probe.status in ("fail", "error"):
        failed = probe.failed
        return "fail", failed.name if failed else probe.failed_stage, code, ""
    if probe.status == "skip":
        if code == UNREACHABLE:  # not attempted: nothing listens — the probe is down with the target
            first = next(iter(probe.stages), None)
            return "fail", first, code, ""
        return "skip", None, None, ""
    slow = next((s for s in probe.stages.values() if s.degraded), None)
    if slow is not None:
        return "degraded", slow.name, None, f"{slow.name} {slow.duration_ms:.0f} ms, over {slow.degraded_ms:.0f} ms"
    return "pass", None, None, ""


def cause_words(stage: str | None, code: str | None) -> str:
    """'server-error at agent': what a failing round said."""
    if code == UNREACHABLE:
        return "target unreachable (not attempted)"
    return " at ".join(x for x in (code or "failed", stage) if x)

