"""The fold of a `hold` stage's events (SessionChanged, HoldTick) into one row per held session and the disruption
summary: how many opened, are open, ended and how (by close code), the window they ended in, how long the way
back took, runs lost, pings missed. The hold step, the model (so the app, the reports and replay) and the
diagnosis all read this one fold. Bounded: at most `MAX_ENDS` ends are kept whole (every one is counted).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from .closecodes import describe
from .events import HoldTick, SessionChanged

MAX_ENDS = 1000  # ends kept whole for the report (all are counted)
RTT_KEEP = 16  # round trips kept per session (its sparkline)


@dataclass(slots=True)
class SessionRow:
    """One held session as the Sessions view shows it."""

    n: int
    state: str = "connecting"  # connecting | open | ended | failed | closed (by us, the hold over)
    opened_at: float | None = None  # wall clock of the current connection's open
    last_rtt: float | None = None
    rtts: deque[float] = field(default_factory=lambda: deque(maxlen=RTT_KEEP))
    stalled: bool = False  # its last ping went unanswered while the socket was open
    ended: SessionChanged | None = None  # its last end
    ends: int = 0
    reopened: int = 0
    failures: int = 0  # refused (re)connect attempts
    last_failure: str = ""


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of `values`; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class HoldFold:
    """Feed it a hold's events in order (`apply`); read `rows`, `summary()`."""

    def __init__(self) -> None:
        self.rows: dict[int, SessionRow] = {}
        self.opened = 0  # sessions that opened at least once
        self.ends: list[SessionChanged] = []  # the first MAX_ENDS ends
        self.ended_total = 0
        self.by_code: Counter[int] = Counter()
        self.by_who: Counter[str] = Counter()
        self.first_end: float | None = None
        self.last_end: float | None = None
        self.reconnect_ms: list[float] = []
        self.reopened_builds: Counter[str] = Counter()
        self.failed_attempts = 0
        self.failure_words: Counter[str] = Counter()
        self.runs_lost = 0
        self.last_tick: HoldTick | None = None
        self.builds_at_end: Counter[str] = Counter()
        self.stalled_sessions: set[int] = set()

    def row(self, n: int) -> SessionRow:
        row = self.rows.get(n)
        if row is None:
            row = self.rows[n] = SessionRow(n)
        return row

    def apply(self, event: SessionChanged | HoldTick) -> None:
        if isinstance(event, HoldTick):
            self.last_tick = event
            for n, rtt in event.rtts:
                row = self.row(n)
                row.last_rtt = rtt
                row.rtts.append(rtt)
                row.stalled = False
            for n in event.stalled:
                self.row(n).stalled = True
                self.stalled_sessions.add(n)
            return
        row = self.row(event.session)
        if event.change in ("opened", "reopened"):
            if row.opened_at is None and row.ends == 0:
                self.opened += 1
            row.state, row.opened_at, row.stalled = "open", event.at, False
            if event.change == "reopened":
                row.reopened += 1
                if event.reconnect_ms is not None:
                    self.reconnect_ms.append(event.reconnect_ms)
                self.reopened_builds[event.build or "?"] += 1
        elif event.change == "ended":
            row.state, row.ended, row.opened_at = "ended", event, None
            row.ends += 1
            self.ended_total += 1
            if len(self.ends) < MAX_ENDS:
                self.ends.append(event)
            self.by_code[event.code if event.code is not None else 1006] += 1
            self.by_who[event.by or "none"] += 1
            self.first_end = event.at if self.first_end is None else min(self.first_end, event.at)
            self.last_end = event.at if self.last_end is None else max(self.last_end, event.at)
            self.runs_lost += event.run_lost
            self.builds_at_end[event.build or "?"] += 1
        elif event.change == "closed":
            row.state, row.opened_at = "closed", None
        elif event.change == "failed":
            row.state = "failed"
            row.failures += 1
            row.last_failure = event.detail
            self.failed_attempts += 1
            self.failure_words[event.detail or "refused"] += 1

    # --- reading ------------------------------------------------------------------------------------------------
    @property
    def open(self) -> int:
        return sum(1 for r in self.rows.values() if r.state == "open")

    def disrupted(self) -> list[SessionChanged]:
        """Ends the far side caused (closed by the server, or dropped), not our own at the hold's end."""
        return [e for e in self.ends if e.by != "client"]

    def by_code_words(self, limit: int = 6) -> str:
        """'1012 ×18, 1006 ×2'."""
        parts = [f"{code} ×{n}" for code, n in self.by_code.most_common(limit)]
        return ", ".join(parts) or "none"

    def summary(self) -> dict[str, Any]:
        """The report's `sessions` object (diagnoses are added by the report from the probe's)."""
        tick = self.last_tick
        window = None
        if self.first_end is not None and self.last_end is not None:
            window = {"first": self.first_end, "last": self.last_end,
                      "seconds": round(self.last_end - self.first_end, 3)}
        ms = self.reconnect_ms
        return {
            "opened": self.opened,
            "open": self.open,
            "closed": [{"id": e.session, "code": e.code, "name": e.name, "reason": e.reason, "by": e.by,
                        "at": e.at, "age_s": e.age_s, "build": e.build, "run_lost": e.run_lost} for e in self.ends],
            "closed_total": self.ended_total,
            "by_code": {str(code): n for code, n in sorted(self.by_code.items())},
            "window": window,
            "reconnects": len(ms),
            "reconnect_ms": {"p50": _r(percentile(ms, 50)), "p95": _r(percentile(ms, 95)),
                             "max": _r(max(ms) if ms else None)},
            "reconnect_failures": self.failed_attempts,
            "reconnect_builds": dict(self.reopened_builds),
            "runs_lost": self.runs_lost,
            "pings_sent": tick.pings_sent if tick else 0,
            "pings_missed": tick.pings_missed if tick else 0,
            "stalled_sessions": len(self.stalled_sessions),
            "rtt_ms": {"p50": tick.rtt_p50_ms if tick else None, "p95": tick.rtt_p95_ms if tick else None},
            "build_now": tick.build if tick else None,
        }

    def headline(self) -> str:
        """One line: 'held 50: 48 open · ended 1012 ×18, 1006 ×2 in 2.1 s · back 20, p50 220 ms, max 900 ms ·
        0 runs lost' (or '… none disrupted · 100 pings, p95 1.1 ms')."""
        s = self.summary()
        parts = [f"held {self.opened}: {s['open']} open"]
        if self.ended_total:
            window = s["window"]
            spread = f" in {window['seconds']:.1f} s" if window else ""
            parts.append(f"ended {self.by_code_words()}{spread}")
        else:
            parts.append("none disrupted")
        if s["reconnects"]:
            back = s["reconnect_ms"]
            parts.append(f"back {s['reconnects']}, p50 {back['p50']:.0f} ms, max {back['max']:.0f} ms")
        if self.failed_attempts:
            parts.append(f"{self.failed_attempts} (re)connect attempts refused")
        if s["pings_sent"]:
            p95 = s["rtt_ms"]["p95"]
            parts.append(f"{s['pings_sent']} pings" + (f", p95 {p95:.1f} ms" if p95 is not None else "")
                         + (f", {s['pings_missed']} missed" if s["pings_missed"] else ""))
        parts.append(f"{self.runs_lost} run{'' if self.runs_lost == 1 else 's'} lost")
        return " · ".join(parts)


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def end_words(code: int | None, reason: str, by: str) -> str:
    """'1012 Service Restart 'deploy' by the server' / '1006 dropped (no close frame)'."""
    if code is None or code == 1006:
        return "1006 dropped (no close frame)"
    who = {"server": "by the server", "client": "by us", "none": ""}.get(by, by)
    # (quoted, not repr(): the reason is made visible once, at the boundary that shows it — repr would double it)
    return f"{code} {describe(code).name}" + (f" '{reason}'" if reason else "") + (f" {who}" if who else "")
