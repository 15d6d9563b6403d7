"""Diagnosis of a hold (held sessions through a rollout): each rule reads the hold's fold (probes/holdfold.py)
and returns its evidence lines when the pattern is there. They sit in `probes.diagnosis.RULES` beside the
others, most specific first: reconnect-failing, stall, dropped-without-close, held-server-error, idle-timeout,
drained-by-deploy.
"""

from __future__ import annotations

import statistics
import time

from .events import SessionChanged
from .holdfold import HoldFold, end_words

MOMENT_S = 2.0  # drops within this of each other happened "at one moment"
DRAIN_WINDOW_S = 120.0  # clean closes spread over at most this are one drain
CLEAN_CODES = frozenset({1001, 1012})
PROXY_TIMERS_S = {30: "GCP load balancer backend timeout (30 s default)",
                  60: "nginx proxy_read_timeout / AWS ALB idle timeout (60 s default)",
                  100: "Cloudflare proxy read timeout (100 s)",
                  300: "Cloud Run request timeout (300 s default)",
                  600: "a 10-minute proxy or load balancer timeout",
                  3600: "Cloud Run maximum request timeout (3600 s)"}


def _clock(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


def _far(fold: HoldFold) -> list[SessionChanged]:
    return fold.disrupted()


def reconnect_failing(fold: HoldFold | None) -> list[str] | None:
    if fold is None or not fold.failed_attempts:
        return None
    stuck = [r for r in fold.rows.values() if r.state == "failed"]
    if not stuck:
        return None
    words = ", ".join(f"{w} ×{n}" for w, n in fold.failure_words.most_common(3))
    return [f"{len(stuck)} of {len(fold.rows)} sessions could not come back by the hold's end",
            f"{fold.failed_attempts} (re)connect attempts refused: {words}",
            f"last: session {stuck[0].n}: {stuck[0].last_failure}"]


def stall(fold: HoldFold | None) -> list[str] | None:
    if fold is None or not fold.stalled_sessions:
        return None
    tick = fold.last_tick
    missed = tick.pings_missed if tick else 0
    return [f"{missed} pings went unanswered on {len(fold.stalled_sessions)} open sessions (socket still open)",
            "no close and no drop: the server (or something on the path) stopped answering — an app freeze or a "
            "blocked event loop, not a network drop"]


def dropped_without_close(fold: HoldFold | None) -> list[str] | None:
    if fold is None:
        return None
    drops = sorted((e for e in _far(fold) if (e.code or 1006) == 1006), key=lambda e: e.at)
    if len(drops) < 2:
        return None
    best: list[SessionChanged] = []
    start = 0
    for end in range(len(drops)):
        while drops[end].at - drops[start].at > MOMENT_S:
            start += 1
        if end - start + 1 > len(best):
            best = drops[start:end + 1]
    if len(best) < 2 or len(best) * 2 < len(_far(fold)) or _fixed_age(best):
        return None  # a few drops among clean closes are the drain's (drained-by-deploy says so)
    return [f"{len(best)} sessions dropped with no close frame (1006) within {best[-1].at - best[0].at:.1f} s "
            f"at {_clock(best[0].at)}", f"ages {min(e.age_s or 0 for e in best):.1f}–"
            f"{max(e.age_s or 0 for e in best):.1f} s: not a timer, one moment",
            f"build then: {best[0].build or '?'}"]


def _fixed_age(ends: list[SessionChanged]) -> float | None:
    ages = [e.age_s for e in ends if e.age_s is not None]
    if len(ages) < 3:
        return None
    median = statistics.median(ages)
    tolerance = max(0.5, 0.05 * median)
    if all(abs(a - median) <= tolerance for a in ages):
        spread = max(e.at for e in ends) - min(e.at for e in ends)
        return median if spread > tolerance else None  # at one age, not at one moment
    return None


SERVER_ERROR_CODES = frozenset({1011, 1014})  # the server failed (an internal error, a bad gateway)


def server_errors(fold: HoldFold | None) -> list[str] | None:
    """Held sessions the server ended with an error code: it failed, whatever the timing looks like."""
    if fold is None:
        return None
    ends = _far(fold)
    failed = [e for e in ends if e.code in SERVER_ERROR_CODES or (e.code is not None and 4000 <= e.code <= 4999
                                                                    and e.by == "server")]
    if not failed or len(failed) * 2 < len(ends):
        return None
    e = failed[-1]
    codes = ", ".join(f"{end_words(c, '', '')} ×{n}" for c, n in fold.by_code.most_common(2))
    return [f"{len(failed)} of {len(ends)} session ends were the server's error closes", f"how: {codes}",
            f"last: {end_words(e.code, e.reason, e.by)} at {_clock(e.at)}"]


def idle_timeout(fold: HoldFold | None) -> list[str] | None:
    if fold is None:
        return None
    ends = _far(fold)
    if server_errors(fold) is not None:
        return None  # the server failing on each session is not a proxy's timer, however regular
    restarts = sum(1 for e in ends if e.code == 1012)
    if restarts * 2 >= len(ends):
        return None  # 1012 says a restart: sessions opened together and drained in order share an age too
    age = _fixed_age(ends)
    if age is None:
        return None
    near = min(PROXY_TIMERS_S, key=lambda s: abs(s - age))
    hint = f"; close to {PROXY_TIMERS_S[near]}" if abs(near - age) <= max(2.0, 0.05 * near) else ""
    codes = ", ".join(f"{end_words(c, '', '')} ×{n}" for c, n in fold.by_code.most_common(2))
    return [f"{len(ends)} sessions ended at the same age, {age:.1f} s after they opened, at different moments"
            + hint, f"how: {codes}"]


def drained_by_deploy(fold: HoldFold | None) -> list[str] | None:
    if fold is None:
        return None
    ends = _far(fold)
    clean = [e for e in ends if e.code in CLEAN_CODES]
    if not clean or len(clean) * 2 < len(ends):
        return None
    window = max(e.at for e in clean) - min(e.at for e in clean)
    if window > DRAIN_WINDOW_S:
        return None
    s = fold.summary()
    back = s["reconnect_ms"]
    builds = ", ".join(f"{b} ×{n}" for b, n in fold.reopened_builds.most_common(2))
    lines = [f"{fold.by_code_words()} within {window:.1f} s from {_clock(min(e.at for e in clean))}",
             f"build at the closes: {clean[0].build or '?'}"]
    drops = len(ends) - len(clean)
    if drops:
        lines.append(f"{drops} of them dropped with no close frame (1006): killed before they could close cleanly")
    if s["reconnects"]:
        lines.append(f"{s['reconnects']} came back: p50 {back['p50']:.0f} ms, p95 {back['p95']:.0f} ms, max "
                     f"{back['max']:.0f} ms; on {builds}")
    if fold.runs_lost:
        lines.append(f"{fold.runs_lost} agent runs in flight were lost")
    return lines
