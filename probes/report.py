"""Reports built from the event stream: the JSON contract for CI, JUnit XML, and Markdown to paste into an issue.

The writers read a `RunModel` (the one fold of the event stream, live or replayed); they never see events.
"""

from __future__ import annotations

import html
import re

import json
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from typing import Any

from .evidence_view import stage_lines
from .closecodes import WHO_CLOSED, close_meaning, close_sentence
from . import sanitize
from .frames import classify
from .model import ProbeModel, RunModel
from .pytest_items import STEP as PYTEST_STEP
from .watch import duration_words, iso


def probe_record(p: ProbeModel) -> dict[str, Any]:
    """One probe in the JSON contract."""
    return {
        "id": p.id, "name": p.name, "priority": p.priority,
        "status": "running" if p.status in ("queued", "running") else p.status,
        "duration_ms": p.duration_ms,
        "stages": [{"name": s.name, "status": s.status, "duration_ms": s.duration_ms, "detail": s.detail,
                    **({"hop": _hop_record(s)} if _hop_record(s) else {}),
                    **({"timing": _timing(s)} if _timing(s) else {}),
                    **({"evidence": s.evidence.to_record()} if s.evidence is not None else {})}
                   for s in p.done_stages],
        "close": p.close_record(),
        "diagnoses": [{"code": d["code"], "summary": d["summary"], "evidence": d.get("evidence", []),
                       "next_step": d.get("next_step", "")} for d in p.diagnoses],
        "frames_in": p.frames_in, "frames_out": p.frames_out,
        **(pytest_fields(p) or {}),
        **({"sessions": {**p.hold.summary(), "diagnoses": [d["code"] for d in p.diagnoses]}}
           if p.hold is not None else {}),
    }


def _timing(stage: Any) -> dict[str, Any] | None:
    """A connect stage's split: {dns_ms, tcp_ms, tls_ms, upgrade_ms}."""
    timing = getattr(stage.evidence, "timing", None) if stage.evidence is not None else None
    if not isinstance(timing, dict) or not timing:
        return None
    return {k: v for k, v in timing.items() if k.endswith("_ms")}


def _hop_record(stage: Any) -> dict[str, Any] | None:
    """Who answered a stage's HTTP request or upgrade (probes/hops.py), as the report shows it."""
    hop = getattr(stage.evidence, "hop", None) if stage.evidence is not None else None
    if not isinstance(hop, dict):
        return None
    return {k: hop.get(k) for k in ("name", "kind", "why", "produced", "idle_s")}


def _phases(p: ProbeModel) -> list[dict[str, Any]]:
    """What pytest said about each phase of a test, in order (typed evidence, or raw from a recording)."""
    out = []
    for s in p.stages.values():
        record = s.evidence.to_record() if s.evidence is not None else {}
        if record.get("kind") == PYTEST_STEP:
            out.append(record)
    return out


def pytest_fields(p: ProbeModel) -> dict[str, Any] | None:
    """A test of a pytest suite: `kind: "pytest"`, its `nodeid`, pytest's `outcome` and the `longrepr` excerpt of
    its first failing phase; None for a probe."""
    phases = _phases(p)
    if not phases:
        return None
    by_when = {str(r.get("when")): r for r in phases}
    outcomes = {when: str(r.get("outcome", "")) for when, r in by_when.items()}
    failing = next((r for r in phases if r.get("outcome") in ("failed", "error")), None)
    if outcomes.get("collect") == "error" or outcomes.get("setup") in ("failed", "error"):
        outcome = "error"
    elif "call" in outcomes and outcomes["call"] != "failed" and outcomes.get("teardown") in ("failed", "error"):
        outcome = "error"
    else:
        outcome = outcomes.get("call") or outcomes.get("setup") or p.status
    return {"kind": "pytest", "nodeid": str(phases[0].get("nodeid") or p.name), "outcome": outcome,
            "longrepr": str(failing.get("longrepr", "")) if failing else ""}


def _iso(model: RunModel, t: float | None) -> str | None:
    if model.wall0 is None or t is None:
        return None
    return datetime.fromtimestamp(model.wall0 + t, tz=timezone.utc).isoformat(timespec="milliseconds")


def _reported(model: RunModel) -> list[ProbeModel]:
    """The probes that started, in queue order (a probe only announced and never run is not reported)."""
    return [p for p in model.ordered() if p.runs]


def to_json(model: RunModel) -> dict[str, Any]:
    first = model.history.first_started
    return {
        "target": model.target,
        "base_url": model.base_url,
        "started_at": iso(first) if model.history.total_rounds > 1 else _iso(model, model.started_t),
        "finished_at": _iso(model, model.finished.t if model.finished else None),
        "verdict": model.verdict,
        **({"fault": model.fault} if model.fault != "none" else {}),  # the sandbox's fault in the last run
        "probes": [probe_record(p) for p in _reported(model)],
        **model.history.report(),
    }


def write_json(model: RunModel) -> str:
    """The JSON contract; every string made visible (a report is read in terminals and CI logs)."""
    return json.dumps(sanitize.tree(to_json(model)), indent=2, ensure_ascii=False) + "\n"


def failure_message(p: ProbeModel) -> str:
    failed = p.failed
    parts = [f"{failed.name}: {failed.detail}" if failed else f"status {p.status}"]
    if p.diagnoses:
        d = p.diagnoses[0]
        parts.append(f"diagnosis {d['code']}: {d['summary']}")
    return " | ".join(parts)


def write_junit(model: RunModel) -> str:
    probes = _reported(model)
    total_s = (model.finished.duration_ms / 1000.0) if model.finished else 0.0
    suites = ET.Element("testsuites", name="stagewatch", tests=str(len(probes)),
                        failures=str(sum(p.status == "fail" for p in probes)),
                        errors=str(sum(p.status == "error" for p in probes)), time=f"{total_s:.3f}")
    suite = ET.SubElement(suites, "testsuite", name=f"stagewatch: {model.target}", tests=str(len(probes)),
                          failures=str(sum(p.status == "fail" for p in probes)),
                          errors=str(sum(p.status == "error" for p in probes)),
                          skipped=str(sum(p.status == "skip" for p in probes)), time=f"{total_s:.3f}",
                          timestamp=_iso(model, model.started_t) or "")
    for p in probes:
        seconds = (p.duration_ms or 0.0) / 1000.0
        test = pytest_fields(p)
        case = ET.SubElement(suite, "testcase", classname=f"stagewatch.P{p.priority}",
                             name=test["nodeid"] if test else p.id, time=f"{seconds:.3f}")
        body = "\n".join(f"{s.status:5} {s.name:<12} {s.duration_ms:8.1f} ms  {s.detail}" for s in p.done_stages)
        c = p.close
        if c is not None:
            body += f"\nclose: {close_sentence(c.code, c.reason, c.by, c.after_ms)}"
        for d in p.diagnoses:
            body += f"\ndiagnosis {d['code']}: {d['summary']}"
            for e in d.get("evidence", []):
                body += f"\n  - {e}"
            if d.get("next_step"):
                body += f"\n  next: {d['next_step']}"
        if test and test["longrepr"]:
            body += f"\n\npytest:\n{test['longrepr']}"
        if p.status in ("fail", "error"):
            tag = "failure" if p.status == "fail" else "error"
            kind = p.diagnoses[0]["code"] if p.diagnoses else (p.failed_stage or p.status)
            el = ET.SubElement(case, tag, message=failure_message(p), type=kind)
            el.text = body
        elif p.status == "skip":
            why = next((s.detail for s in p.done_stages if s.detail), "not run")
            ET.SubElement(case, "skipped", message=why)
        else:
            ET.SubElement(case, "system-out").text = body
    ET.indent(suites)
    # Control characters are not allowed in XML 1.0: made visible, the file always parses.
    return sanitize.visible('<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n")


_GLYPH = {"pass": "✅", "fail": "❌", "error": "⚠️", "skip": "⏭️", "running": "…"}


def _md_cell(text: str) -> str:
    """Outside text in Markdown prose or a table cell: no HTML, no link or image, no code span, no cell break (a
    report is pasted into an issue, where a server's `<h1>` or `![](…)` would render)."""
    text = html.escape(text, quote=False).replace("\n", " ")
    for ch in "\\|[]`":  # (emphasis marks stay: at worst italics, and ids like connection_established read as sent)
        text = text.replace(ch, "\\" + ch)
    return text


def _code(text: str) -> str:
    """Outside text inside a `code span`: a backtick would end it."""
    return text.replace("`", "'").replace("\n", " ")


def _fenced(lines: list[str]) -> list[str]:
    """A fenced block longer than any run of backticks inside it, so outside text cannot close it."""
    longest = max((len(run) for line in lines for run in re.findall(r"`+", line)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence, *lines, fence]


def _when(wall: float | None) -> str:
    return "" if wall is None else datetime.fromtimestamp(wall, tz=timezone.utc).strftime("%H:%M:%S")


def _watch_markdown(model: RunModel) -> list[str]:
    """A watch leads with its outages, then the changes and builds: what a deploy's reader asks first."""
    h = model.history
    if h.total_rounds <= 1 and not h.outages:
        return []
    out = [f"### Watch: {h.total_rounds} rounds, {h.failed_rounds} failed · verdict is the last round's", ""]
    if h.outages:
        out += ["**Outages** (UTC)", "", "| probe | down from | back at | for | rounds | causes, in order | builds |",
                "|---|---|---|---:|---:|---|---|"]
        rows: dict[tuple[str, str, str, int, str, str], list[str]] = {}  # probes down alike share a row
        for o in h.outages:
            took = duration_words(o.duration_s) if o.duration_s is not None else "**still down**"
            key = (_when(o.start), _when(o.end) or "—", took, o.rounds, " → ".join(o.causes), ", ".join(o.builds))
            rows.setdefault(key, []).append(o.probe)
        for (start, end, took, n, causes, builds), names in rows.items():
            out.append(f"| {', '.join(names)} | {start} | {end} | {took} | {n} | {_md_cell(causes)} | "
                       f"{_md_cell(builds)} |")
        out.append("")
    else:
        out += ["No outage: no probe was DOWN.", ""]
    changes = list(h.timeline)[-60:]
    if changes:
        out += ["**Changes** (UTC" + (", the last 60" if len(h.timeline) > 60 else "") + ")", ""]
        out += [f"- {_when(c.at)} {_md_cell(c.text)}" for c in changes]
        out.append("")
    if h.builds:
        out += ["**Builds:** " + " → ".join(f"`{_code(b.build)}` ({_when(b.first_seen)}–{_when(b.last_seen)})"
                                           for b in list(h.builds)[-10:]), ""]
    out += ["**Last round:**", ""]
    return out


CONSOLE_PROBE = "console"  # probes.console.CONSOLE_ID: a hand-driven session, reported stage by stage even when it passed


def write_markdown(model: RunModel) -> str:
    probes = _reported(model)
    passed = sum(p.status == "pass" for p in probes)
    h = model.history
    if h.total_rounds > 1:
        rounds = (f"watched {_when(h.first_started)}–{_when(h.rounds[-1].finished_at or h.rounds[-1].started_at)} UTC"
                  f" · {h.total_rounds} rounds · each probe's latest result below")
    else:
        rounds = (f"started {_iso(model, model.started_t) or '?'}"
                  + (f" · {model.finished.duration_ms / 1000:.2f} s" if model.finished else ""))
    out = [f"## stagewatch: {model.verdict.upper()} — {_md_cell(model.target)}",
           "",
           f"{passed}/{len(probes)} {'tests' if probes and all(map(pytest_fields, probes)) else 'probes'} passed · "
           f"{rounds}",
           "",
           *_watch_markdown(model),
           "| P | probe | status | ms | failed at |",
           "|---|---|---|---:|---|"]
    for p in probes:
        ms = f"{p.duration_ms:.0f}" if p.duration_ms is not None else ""
        test = pytest_fields(p)
        shown = f"`{_code(test['nodeid'])}`" if test else _md_cell(p.id)
        out.append(f"| P{p.priority} | {shown} | {_GLYPH.get(p.status, p.status)} {p.status} | {ms} | "
                   f"{_md_cell(p.failed_stage or '')} |")
    for p in probes:
        if p.status not in ("fail", "error") and p.id != CONSOLE_PROBE:  # a console session is shown whole
            continue
        test = pytest_fields(p)
        title = f"`{_code(test['nodeid'])}` ({test['outcome']})" if test else f"{_md_cell(p.id)} ({_md_cell(p.name)})"
        out += ["", f"### {title}", "", "| stage | status | ms | detail |", "|---|---|---:|---|"]
        for s in p.done_stages:
            out.append(f"| {_md_cell(s.name)} | {s.status} | {s.duration_ms:.0f} | {_md_cell(s.detail)} |")
        failed = p.failed
        if failed is not None and failed.evidence is not None:  # what the backend saw and said, for the issue
            out += ["", f"<details><summary>{_md_cell(failed.name)}: its whole evidence</summary>", "",
                    *_fenced(stage_lines(p, failed)[1:]), "</details>"]
        c = p.close
        if c is not None:
            meaning = close_meaning(c.code, c.by)
            out += ["", f"**Close:** `{c.code}` {c.name} — reason `{_code(c.reason) or '(none)'}` — "
                        f"{WHO_CLOSED.get(c.by, c.by)} {c.after_ms:.0f} ms after accept. {meaning[:1].upper()}"
                        f"{meaning[1:]}."]
        for d in p.diagnoses:
            out += ["", f"**Diagnosis `{_code(d['code'])}`:** {_md_cell(d['summary'])}"]
            out += [f"- {_md_cell(e)}" for e in d.get("evidence", [])]
            if d.get("next_step"):
                out.append(f"- **Next:** {_md_cell(d['next_step'])}")
        frames = list(p.last_frames)
        if frames:
            out += ["", f"<details><summary>last {len(frames)} frames{' before the close' if c else ''}</summary>", ""]
            out += _fenced([f"{f.ms:8.1f} ms {'→' if f.direction == 'out' else '←'} {f.size:6d} B  "
                            f"{classify(f.data).summary}" for f in frames])
            out += ["</details>"]
        if test and test["longrepr"]:
            out += ["", "<details><summary>pytest's failure</summary>", "", *_fenced(test["longrepr"].split("\n")),
                    "</details>"]
    return sanitize.visible("\n".join(out) + "\n")
