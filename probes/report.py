"""Reports built from the event stream: the JSON contract for CI, JUnit XML, and Markdown to paste into an issue.

`RunSummary` listens to events (live or replayed) and keeps per-probe results; the writers only read it.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .closecodes import describe, label
from .events import (Diagnosed, Event, ProbeFinished, ProbeStarted, RunFinished, RunStarted, StageFinished)
from .evidence import Evidence
from .frames import classify


@dataclass
class ProbeReport:
    id: str
    name: str
    priority: int
    stages_planned: tuple[str, ...]
    evidence: Evidence
    finished: ProbeFinished | None = None
    diagnoses: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.finished.status if self.finished else "running"

    @property
    def failed_stage(self) -> str | None:
        return self.finished.failed_stage if self.finished else None

    def to_dict(self) -> dict[str, Any]:
        ev = self.evidence
        return {
            "id": self.id, "name": self.name, "priority": self.priority, "status": self.status,
            "duration_ms": self.finished.duration_ms if self.finished else None,
            "stages": [{"name": s.name, "status": s.status, "duration_ms": s.duration_ms, "detail": s.detail}
                       for s in ev.stages],
            "close": ev.close_summary(),
            "diagnoses": [{"code": d["code"], "summary": d["summary"], "evidence": d.get("evidence", []),
                           "next_step": d.get("next_step", "")} for d in self.diagnoses],
            "frames_in": ev.frames_in, "frames_out": ev.frames_out,
        }


class RunSummary:
    """Subscribe `summary.handle` to the bus (or feed it a replay) and read the results at any time."""

    def __init__(self) -> None:
        self.target = ""
        self.base_url = ""
        self.wall0: float | None = None
        self.started_t = 0.0
        self.finished: RunFinished | None = None
        self.probes: dict[str, ProbeReport] = {}
        self.order: list[tuple[str, str, int]] = []
        self.runs = 0  # a recording of a live session may hold several runs (reruns, --watch rounds)

    def handle(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.runs += 1
            self.target, self.base_url, self.wall0 = event.target, event.base_url, event.wall
            self.started_t = event.t
            self.order = list(event.probes)
            return
        if isinstance(event, RunFinished):
            self.finished = event
            return
        probe_id = getattr(event, "probe_id", None)
        if probe_id is None:
            return
        if isinstance(event, ProbeStarted):
            self.probes[probe_id] = ProbeReport(probe_id, event.name, event.priority, event.stages,
                                                Evidence(probe_id=probe_id))
        report = self.probes.get(probe_id)
        if report is None:
            return
        report.evidence.add(event)
        if isinstance(event, Diagnosed):
            report.diagnoses = [dict(d) for d in event.diagnoses]
        elif isinstance(event, ProbeFinished):
            report.finished = event

    @property
    def verdict(self) -> str:
        if self.finished is not None:
            return self.finished.verdict
        return "fail" if any(p.status in ("fail", "error") for p in self.probes.values()) else "running"

    def _iso(self, t: float | None) -> str | None:
        if self.wall0 is None or t is None:
            return None
        return datetime.fromtimestamp(self.wall0 + t, tz=timezone.utc).isoformat(timespec="milliseconds")

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "base_url": self.base_url,
            "started_at": self._iso(self.started_t),
            "finished_at": self._iso(self.finished.t if self.finished else None),
            "verdict": self.verdict,
            "probes": [p.to_dict() for p in self.probes.values()],
        }


def write_json(summary: RunSummary) -> str:
    return json.dumps(summary.to_json(), indent=2, ensure_ascii=False) + "\n"


def failure_message(p: ProbeReport) -> str:
    failed = p.evidence.failed
    parts = [f"{failed.name}: {failed.detail}" if failed else f"status {p.status}"]
    if p.diagnoses:
        d = p.diagnoses[0]
        parts.append(f"diagnosis {d['code']}: {d['summary']}")
    return " | ".join(parts)


def write_junit(summary: RunSummary) -> str:
    probes = list(summary.probes.values())
    total_s = (summary.finished.duration_ms / 1000.0) if summary.finished else 0.0
    suites = ET.Element("testsuites", name="stagewatch", tests=str(len(probes)),
                        failures=str(sum(p.status == "fail" for p in probes)),
                        errors=str(sum(p.status == "error" for p in probes)), time=f"{total_s:.3f}")
    suite = ET.SubElement(suites, "testsuite", name=f"stagewatch: {summary.target}", tests=str(len(probes)),
                          failures=str(sum(p.status == "fail" for p in probes)),
                          errors=str(sum(p.status == "error" for p in probes)),
                          skipped=str(sum(p.status == "skip" for p in probes)), time=f"{total_s:.3f}",
                          timestamp=summary._iso(summary.started_t) or "")
    for p in probes:
        seconds = (p.finished.duration_ms / 1000.0) if p.finished else 0.0
        case = ET.SubElement(suite, "testcase", classname=f"stagewatch.P{p.priority}", name=p.id,
                             time=f"{seconds:.3f}")
        body = "\n".join(f"{s.status:5} {s.name:<12} {s.duration_ms:8.1f} ms  {s.detail}" for s in p.evidence.stages)
        close = p.evidence.close_summary()
        if close:
            body += f"\nclose: {label(close['code'])} '{close['reason']}' by {close['by']} after {close['after_ms']} ms"
        for d in p.diagnoses:
            body += f"\ndiagnosis {d['code']}: {d['summary']}"
            for e in d.get("evidence", []):
                body += f"\n  - {e}"
            if d.get("next_step"):
                body += f"\n  next: {d['next_step']}"
        if p.status in ("fail", "error"):
            tag = "failure" if p.status == "fail" else "error"
            kind = p.diagnoses[0]["code"] if p.diagnoses else (p.failed_stage or p.status)
            el = ET.SubElement(case, tag, message=failure_message(p), type=kind)
            el.text = body
        elif p.status == "skip":
            why = next((s.detail for s in p.evidence.stages if s.detail), "not run")
            ET.SubElement(case, "skipped", message=why)
        else:
            ET.SubElement(case, "system-out").text = body
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


_GLYPH = {"pass": "✅", "fail": "❌", "error": "⚠️", "skip": "⏭️", "running": "…"}


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_markdown(summary: RunSummary) -> str:
    probes = list(summary.probes.values())
    passed = sum(p.status == "pass" for p in probes)
    out = [f"## stagewatch: {summary.verdict.upper()} — {summary.target}",
           "",
           f"{passed}/{len(probes)} probes passed · started {summary._iso(summary.started_t) or '?'}"
           + (f" · {summary.finished.duration_ms / 1000:.2f} s" if summary.finished else "")
           + (f" · the latest result of each probe over {summary.runs} runs (this line: the last run)"
              if summary.runs > 1 else ""),
           "",
           "| P | probe | status | ms | failed at |",
           "|---|---|---|---:|---|"]
    for p in probes:
        ms = f"{p.finished.duration_ms:.0f}" if p.finished else ""
        out.append(f"| P{p.priority} | {p.id} | {_GLYPH.get(p.status, p.status)} {p.status} | {ms} | "
                   f"{p.failed_stage or ''} |")
    for p in probes:
        if p.status not in ("fail", "error"):
            continue
        out += ["", f"### {p.id} ({p.name})", "", "| stage | status | ms | detail |", "|---|---|---:|---|"]
        for s in p.evidence.stages:
            out.append(f"| {s.name} | {s.status} | {s.duration_ms:.0f} | {_md_cell(s.detail)} |")
        close = p.evidence.close_summary()
        if close:
            info = describe(close["code"])
            out += ["", f"**Close:** `{close['code']}` {info.name} — reason `{close['reason'] or '(none)'}` — "
                        f"closed by {close['by']} {close['after_ms']:.0f} ms after accept. {info.meaning[:1].upper()}"
                        f"{info.meaning[1:]}."]
        for d in p.diagnoses:
            out += ["", f"**Diagnosis `{d['code']}`:** {d['summary']}"]
            out += [f"- {e}" for e in d.get("evidence", [])]
            if d.get("next_step"):
                out.append(f"- **Next:** {d['next_step']}")
        frames = p.evidence.recent_frames()
        if frames:
            out += ["", "<details><summary>last frames before the close</summary>", "", "```"]
            for f in frames:
                arrow = "→" if f.direction == "out" else "←"
                out.append(f"{f.ms:8.1f} ms {arrow} {f.size:6d} B  {classify(f.data).summary}")
            out += ["```", "</details>"]
    return "\n".join(out) + "\n"
