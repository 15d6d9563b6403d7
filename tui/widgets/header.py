"""The header: target, deployed build (from health; marked stale when health reported none in the last round),
token subject and expiry countdown, run counters, and what the session is (live with its recording path, or a
replay with its position and speed). While watching, the run counter gives way to the rounds: "watch 10 s ·
round 14 FAIL · 14:03:12 (8 s ago) · next in 2 s"."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from rich.text import Text

from probes.sanitize import one_line
from textual.widgets import Static

from tui.state import SessionState, fmt_countdown, fmt_ms
from tui.watching import interval_words
from tui.widgets.theme import status_color


@dataclass
class SessionInfo:
    """What the header says about the session besides the events (set by the app)."""

    mode: str = "live"  # live | replay | follow
    fail_fast: bool = False
    recording: str | None = None
    recording_error: str | None = None
    replay_file: str = ""
    replay_position: str = ""
    replay_speed: str = ""
    replay_paused: bool = False
    replay_truncated: bool = False
    fault: str = "none"
    insecure: bool = False  # TLS certificates are not verified (--insecure)
    watch_view: bool = False  # the session shows rounds (watching now, or watched before, or a watch replayed)
    watch_interval: float | None = None  # seconds between rounds while watching; None: not watching
    watch_next_at: float | None = None  # epoch seconds of the next round (while waiting for it)
    watch_stopping: bool = False  # the watch ends after the round under way


def ago(seconds: float) -> str:
    """'8 s', '2 m 05 s', '1 h 03 m' (whole seconds: a header that ticks once a second)."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} m {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} m"


class HeaderBar(Static):
    """Two lines, rebuilt on every state change and once a second for the countdown."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.plain = ""

    def show(self, state: SessionState, info: SessionInfo, now: Callable[[], float]) -> None:
        ok, bad = status_color(self.app, "pass"), status_color(self.app, "fail")
        accent = self.app.theme_variables.get("accent", "cyan")
        sep = (" │ ", "dim")
        top = Text()
        top.append(" stagewatch ", style=f"bold reverse {accent}")
        top.append(" target ", style="dim")
        top.append(state.target or "…", style="bold")
        if state.base_url and state.base_url != state.target:
            top.append(f" {state.base_url.removeprefix('http://')}", style="dim")
        if info.insecure and info.mode == "live":
            top.append(" · TLS NOT VERIFIED (--insecure)", style=f"bold {bad}")
        top.append(*sep)
        top.append("build ", style="dim")
        top.append(state.version or "—", style="bold")
        if state.version and not state.history.build_reachable:
            # what health said in an earlier round: this one named none (refused, 503, no version field alike)
            top.append(" (stale: not reported this round)", style=f"bold {status_color(self.app, 'error')}")
        top.append(*sep)
        top.append("token ", style="dim")
        token = state.token
        if token is not None and (token.sub or token.exp):
            top.append(token.sub or "(no sub)", style="bold")
            if token.exp is not None:
                left = token.exp - now()
                top.append(" · expires " if left > 0 else " · ", style="dim")  # (not "expires expired 3 m ago")
                top.append(fmt_countdown(left), style=f"bold {bad}" if left < 60 else "bold")
        else:
            top.append("—")

        bottom = Text(" ")
        fault = info.fault if info.mode == "live" and not state.runs else state.fault  # each run says its own
        if fault and fault != "none":
            bottom.append(f"fault {one_line(fault)}", style=f"bold {status_color(self.app, 'error')}")
            bottom.append(*sep)
        if info.mode == "follow":  # another stagewatch's recording, as it is written
            bottom.append("◉ follow", style=f"bold {accent}")
            bottom.append(f" {info.replay_position}")
            bottom.append(*sep)
        if info.mode == "replay":
            top_style = status_color(self.app, "error")
            bottom.append("⏸ paused" if info.replay_paused else "▶ replay", style=f"bold {top_style}")
            bottom.append(f" {info.replay_speed} · {info.replay_position}")
            if info.replay_truncated:
                bottom.append(" · truncated recording (the last line was cut short)", style=f"bold {bad}")
            bottom.append(*sep)
        c = state.counts()
        if info.watch_view:
            self._rounds(bottom, state, info, now, accent)
        else:
            bottom.append(f"run {state.runs}", style="bold")
        if state.running:
            bottom.append(" running", style=f"bold {accent}")
        elif state.finished is not None:
            verdict = state.finished.verdict
            color = ok if verdict == "pass" else bad
            bottom.append(f" {verdict.upper()}", style=f"bold {color}")
            if info.watch_view:
                self._when(bottom, state, info, now)
            else:
                bottom.append(f" in {fmt_ms(state.finished.duration_ms)}", style="dim")
        bottom.append(*sep)
        bottom.append(f"✔ {c['pass']} passed", style=ok)
        failed = c["fail"] + c["error"]
        bottom.append(f"  ✘ {failed} failed", style=f"bold {bad}" if failed else "dim")
        for key, word in (("running", "running"), ("queued", "queued"), ("skip", "skipped"), ("stopped", "stopped")):
            if c[key]:
                bottom.append(f"  {c[key]} {word}", style="dim")
        bottom.append(*sep)
        bottom.append(f"frames {state.frames_total():,}")
        if info.mode in ("replay", "follow"):
            bottom.append(*sep)
            bottom.append(info.replay_file, style="dim")  # last: a long path must not hide the counters
        if info.mode == "live":
            bottom.append(*sep)
            bottom.append("fail-fast ", style="dim")
            bottom.append("on" if info.fail_fast else "off", style="bold" if info.fail_fast else "")
            bottom.append(*sep)
            if info.recording_error:
                bottom.append(f"not recording: {info.recording_error}", style=bad)
            elif info.recording:
                bottom.append("● rec ", style=f"bold {bad}")
                bottom.append(info.recording, style="dim")
            else:
                bottom.append("not recording", style="dim")
        plain = top.plain + "\n" + bottom.plain
        if plain == self.plain:
            return
        self.plain = plain
        both = Text("\n").join([top, bottom])
        both.no_wrap, both.overflow = True, "ellipsis"
        self.update(both, layout=False)  # always two lines

    def _rounds(self, line: Text, state: SessionState, info: SessionInfo, now: Callable[[], float],
                accent: str) -> None:
        """'watch 10 s │ round 14' (the verdict and the time follow)."""
        if info.watch_interval is not None:
            line.append(f"⟳ watch {interval_words(info.watch_interval)}", style=f"bold {accent}")
            if info.watch_stopping:
                line.append(" (stops after this round)", style="dim")
        else:
            line.append("watch stopped" if info.mode == "live" else "watch", style="dim")
        line.append(" │ ", style="dim")
        line.append(f"round {state.history.total_rounds}", style="bold")

    def _when(self, line: Text, state: SessionState, info: SessionInfo, now: Callable[[], float]) -> None:
        """' · 14:03:12 (8 s ago) · next in 2 s'."""
        rnd = state.history.current
        if rnd is not None:
            at = time.strftime("%H:%M:%S", time.localtime(rnd.started_at))
            line.append(f" · {at} ({ago(now() - rnd.started_at)} ago)", style="dim")
        if info.watch_interval is not None and info.watch_next_at is not None:
            line.append(f" · next in {ago(info.watch_next_at - now() + 0.999)}", style="bold")
