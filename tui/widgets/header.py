"""The header: target, deployed build (from health), token subject and expiry countdown, run counters, and
what the session is (live with its recording path, or a replay with its position and speed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich.text import Text
from textual.widgets import Static

from tui.state import SessionState, fmt_countdown, fmt_ms
from tui.widgets.theme import status_color


@dataclass
class SessionInfo:
    """What the header says about the session besides the events (set by the app)."""

    mode: str = "live"  # live | replay
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
        top.append(*sep)
        top.append("token ", style="dim")
        token = state.token
        if token is not None and (token.sub or token.exp):
            top.append(token.sub or "(no sub)", style="bold")
            if token.exp is not None:
                left = token.exp - now()
                top.append(" · expires ", style="dim")
                top.append(fmt_countdown(left), style=f"bold {bad}" if left < 60 else "bold")
        else:
            top.append("—")

        bottom = Text(" ")
        if info.fault != "none" and info.mode == "live":
            bottom.append(f"fault {info.fault}", style=f"bold {status_color(self.app, 'error')}")
            bottom.append(*sep)
        if info.mode == "replay":
            top_style = status_color(self.app, "error")
            bottom.append("⏸ paused" if info.replay_paused else "▶ replay", style=f"bold {top_style}")
            bottom.append(f" {info.replay_speed} · {info.replay_position}")
            if info.replay_truncated:
                bottom.append(" · truncated recording (the last line was cut short)", style=f"bold {bad}")
            bottom.append(*sep)
        c = state.counts()
        bottom.append(f"run {state.runs}", style="bold")
        if state.running:
            bottom.append(" running", style=f"bold {accent}")
        elif state.finished is not None:
            verdict = state.finished.verdict
            color = ok if verdict == "pass" else bad
            bottom.append(f" {verdict.upper()}", style=f"bold {color}")
            bottom.append(f" in {fmt_ms(state.finished.duration_ms)}", style="dim")
        bottom.append(*sep)
        bottom.append(f"✔ {c['pass']} passed", style=ok)
        failed = c["fail"] + c["error"]
        bottom.append(f"  ✘ {failed} failed", style=f"bold {bad}" if failed else "dim")
        for key, word in (("running", "running"), ("queued", "queued"), ("skip", "skipped")):
            if c[key]:
                bottom.append(f"  {c[key]} {word}", style="dim")
        bottom.append(*sep)
        bottom.append(f"frames {state.frames_total():,}")
        if info.mode == "replay":
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
