"""The `?` help screen: every key, what the panes show, and how to read a close."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# stagewatch — keys

| key | what it does |
|---|---|
| `r` | rerun the focused probe |
| `R` | run the whole queue again (P0 first) |
| `f` | fail-fast on/off for the next run (stop at the first failing probe) |
| `space` | live: pause/resume following new frames · replay: pause/resume |
| `n` / `→` | replay: step to the next event (a burst of frames counts as one) |
| `+` / `-` | replay: faster / slower |
| `/` | filter frames: words match type, summary or text; `type:NAME`, `in`, `out`; `!` inverts; `esc` clears |
| `enter` | on a frame: open it whole (pretty JSON, text, or hex) — `esc` goes back |
| `c` | copy the selected frame (frames pane focused), else the close summary and diagnosis |
| `w` | watch: run the queue in rounds (`--watch 10s`); pressed during a round, stop after it; again, stop now |
| `W` | the watch interval (5s, 10s, 30s, 1m, or any like 45s); the palette has the presets |
| `[` / `]` | watch: show an earlier / later round (also `←` `→` on the queue, or click a history cell); `esc` back to live |
| `t` | watch: the right-hand pane shows the timeline, per-stage latency, or the frame detail |
| `s` | the Stages pane: `↑`/`↓` (or a click) pick a stage and the Frame pane shows its whole evidence — the request and answer with headers (credentials redacted), the token's claims and expiry, the upgrade as sent and answered, the frames with their gaps, what the diagnosis cites; `enter` opens it whole, `c` copies it; `esc`/`tab` back |
| `v` | the focused probe's waterfall in the Frame pane: each stage a bar on one time axis, connect split into DNS / TCP / TLS / upgrade (again: back to the frame) |
| `x` | the console: your own session on the target — compose JSON (templates, saved, `↑`/`↓` history), `ctrl+s` send, `ctrl+g` ping, `ctrl+k` close with the code and reason given, `ctrl+r` reconnect with the token transport, headers (`X-A: 1; -X-E2E-Test`), claims (`sub=other exp=-60`) or subprotocol set above, `ctrl+b` save the message |
| `m` | auth-path matrix: one connection per token transport (subprotocol, header, query, both, none), what the backend received, one conclusion |
| `d` | compare two runs: this round and the one before (watch), else the last recording of this queue and this session |
| `tab` / `shift+tab` | the next / previous pane: queue → stages → frames → frame → close → diagnosis; each scrolls with the arrows and page keys |
| `z` | maximise the focused pane to the whole screen (80×24: read a long diagnosis or a stage's evidence whole); `z` or `esc` restores |
| `↑ ↓ pgup pgdn home end` | move in the focused list; `end` resumes following |
| `ctrl+p` | command palette: the same actions, switch target, sandbox fault |
| `?` | this help · `q` quit |

## The panes

* **Queue** — probes by priority: glyph (✔ pass, ✘ fail, ! error, – skipped, ▶ running), time, last result.
  Moving the cursor focuses a probe; until you do, the focus follows the running probe and stops on the
  first failure. While watching: each probe's state (UP; DEGRADED: a stage slower than its threshold;
  PENDING: failing, not confirmed yet; DOWN: failed `confirm` rounds in a row) and its history strip, one
  cell per round (✓ pass, ~ degraded, ✗ fail, · not run), under the build lane: the build health reported in
  each round (▏ marks a new build; ? a round where health reported none). A round's flips make one short toast.
* **Timeline** (watch) — every flip and build change in local time, newest at the bottom (followed until you
  scroll up): when it broke, on which build, at which stage and why; when it came back and how long it was down.
* **Latency** (watch) — each stage's time over the rounds (passing runs) with p50 and p95: a slow drift
  shows before a break.
* **Stages** — the focused probe's path, each stage with status, duration and what the engine saw.
* **Frames** — every frame: ↓ received / ↑ sent, time since the connection was accepted, size, type, summary.
  The newest is followed; move up and the border counts the new ones. The last 5,000 frames per probe are
  shown; the recording on disk has them all.
* **Close** — code and RFC 6455 name, reason, who closed first, time since accept. 1005, 1006 and 1015 are
  never sent by a peer: your client reports them when no close frame arrived.
* **Diagnosis** — the engine's rules over the evidence, with the next step to take.

Press `esc`, `q` or `?` to close this screen; `↑ ↓ pgup pgdn` scroll it.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,q,question_mark", "dismiss", "Close help", id="close-help"),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 100; max-width: 95%; height: 85%;
        border: round $accent; background: $surface; padding: 0 1;
    }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Markdown(HELP)

    def on_mount(self) -> None:
        self.query_one(VerticalScroll).focus()  # arrows, page keys, home/end scroll the help

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)
