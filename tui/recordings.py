"""One line about a recording for `stagewatch recordings`: when, target, verdict, runs, faults, size — read from the
file (large ones by their size alone, so listing never stalls on a flood's recording)."""

from __future__ import annotations

import time
from pathlib import Path

from probes.events import RunFinished, RunStarted
from probes.recording import RecordingError, read_recording
from probes.sanitize import one_line

READ_LIMIT = 8 * 2**20  # bytes: a larger recording is listed by its size only


def describe(path: Path) -> str:
    try:
        size = sum(p.stat().st_size for p in path.parent.glob(path.stem + "*.jsonl"))
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))
    except OSError as exc:
        return one_line(f"  {path.name}  (unreadable: {exc})")
    words = f"{size / 1024:,.0f} KB"
    if size > READ_LIMIT:
        return one_line(f"  {path.name}  {when}  {words}  (large: replay it to see)")
    try:
        rec = read_recording(path)
    except RecordingError as exc:
        return one_line(f"  {path.name}  {when}  {words}  (not readable: {exc})")
    starts = [e for e in rec.events if isinstance(e, RunStarted)]
    ends = [e for e in rec.events if isinstance(e, RunFinished)]
    target = starts[-1].target if starts else "?"
    verdict = ends[-1].verdict.upper() if ends else ("running or cut short" if starts else "no run")
    faults = sorted({e.fault for e in starts if e.fault != "none"})
    fault = f"  fault {', '.join(faults)}" if faults else ""
    runs = f"{len(starts)} run{'s' * (len(starts) != 1)}"
    return one_line(f"  {path.name}  {when}  {target}  {verdict}  {runs}{fault}  {words}")
