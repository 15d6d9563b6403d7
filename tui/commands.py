"""The command palette (ctrl+p): the app's actions by name, plus "switch target", "sandbox fault" and the watch
(start/stop, the interval: a preset or a prompt, the round shown, the right-hand pane)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from textual.command import DiscoveryHit, Hit, Hits, Provider

from probes.sandbox import FAULTS
from tui.watching import PRESETS, interval_words

if TYPE_CHECKING:
    from tui.app import StagewatchApp


class StagewatchCommands(Provider):
    """Every key's action, each target of the config, and (live, sandbox) each fault."""

    def _commands(self) -> list[tuple[str, str, Callable[[], object]]]:
        app: StagewatchApp = self.app  # type: ignore[assignment]
        commands: list[tuple[str, str, Callable[[], object]]] = []
        if app.is_live:
            commands += [
                ("Rerun focused probe", "Run the focused probe again (r)", app.action_rerun),
                ("Run the queue", "Run every probe in priority order (R)", app.action_run_queue),
                ("Toggle fail-fast", "Stop the queue at the first failing probe (f)", app.action_fail_fast),
                ("Stop watching" if app.control is not None else "Start watching",
                 f"Run the queue in rounds, every {interval_words(app.watch_interval)} (w)", app.action_watch),
                ("Watch interval…", "Type the time between rounds: 10s, 2m, 500ms (W)", app.action_interval),
                ("Console: open/close", "A session of your own: compose and send frames, ping, close with a code, "
                 "reconnect with another token transport, headers or claims (x)", app.action_console),
                *[(f"Copy as {form}", f"The golden path (the console's session when focused) as {form} — works "
                   "when pasted", partial(app.tools.copy_as, form)) for form in ("websocat", "python", "wscat", "curl")],
                ("Export the session as Markdown", "The report of this session (the console's included), written "
                 "beside the recordings and copied", app.tools.export_markdown),
                ("Auth-path matrix", "Connect once per token transport (subprotocol, header, query, both, none) and "
                 "say which reaches the backend (m)", app.action_matrix),
            ]
            for seconds in PRESETS:
                words = interval_words(seconds)
                current = " (current)" if seconds == app.watch_interval else ""
                commands.append((f"Watch interval: {words}{current}", f"A round every {words}",
                                 partial(app.set_watch_interval, seconds)))
        else:
            commands += [
                ("Step replay", "Deliver the next event of the recording (n)", app.action_step),
                ("Replay faster", "Double the replay speed (+)", partial(app.action_speed, 1)),
                ("Replay slower", "Halve the replay speed (-)", partial(app.action_speed, -1)),
            ]
        if app.watch_view:
            commands += [
                ("Earlier round", "Show the round before the one shown: stages, frames, close, diagnosis ([)",
                 partial(app.action_round, -1)),
                ("Later round", "Show the next round; past the newest, the live one (])", partial(app.action_round, 1)),
                ("Latest round", "Back to the live round (esc)", partial(app.select_round, None)),
                ("Switch pane: timeline / latency / frame", "The middle row's right-hand pane (t)", app.action_panel),
            ]
        commands += [
            ("Pause / follow" if not app.is_live else "Follow",
             "Pause or resume the replay (space)" if not app.is_live else
             "Stop or resume following new frames (space)", app.action_pause),
            ("Stages", "Pick a stage (↑/↓): its whole evidence in the Frame pane — the request and answer, the token, "
             "the upgrade as sent, its frames (s)", app.action_stages),
            ("Waterfall", "The focused probe's stages on one time axis, connect split into DNS / TCP / TLS / upgrade "
             "(v)", app.action_waterfall),
            ("Filter frames", "Show only frames matching a text or type:NAME (/)", app.action_filter),
            ("Copy frame or close summary", "Copy the selected frame, else the close summary (c)",
             app.action_copy),
            ("Compare two runs", "This round and the one before, or the last recording and this session: stage "
             "timings, frames aligned, the first divergence (d)", app.action_compare),
            ("Max", "Maximise the focused pane to the whole screen; again restores the layout (z)",
             app.action_zoom),
            ("Next pane", "Focus the next pane: queue, stages, frames, frame, close, diagnosis (tab)",
             app.action_focus_next),
            ("Previous pane", "Focus the pane before (shift+tab)", app.action_focus_previous),
            ("Help", "Every key and what the panes show (?)", app.action_help),
            ("Quit", "Leave stagewatch (q)", app.action_quit),
        ]
        if app.is_live:
            for name in app.config.targets:
                current = " (current)" if app.target is not None and app.target.name == name else ""
                commands.append((f"Switch target: {name}{current}", f"Probe target {name!r} from the config",
                                 partial(app.switch_target, name)))
            if app.target is not None and app.target.is_sandbox:
                for fault, text in FAULTS.items():
                    commands.append((f"Sandbox fault: {fault}", text, partial(app.switch_fault, fault)))
        return commands

    async def discover(self) -> Hits:
        for name, help_text, callback in self._commands():
            if name.startswith("Sandbox fault"):
                continue
            yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, callback in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)
