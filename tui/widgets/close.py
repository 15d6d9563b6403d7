"""How the focused probe's connection ended (the close panel) and what the engine concluded (the diagnosis panel).

The close line reads "1000 Normal Closure — 'main cleanup' — server closed 50 ms after accept"; codes a peer can
never send (1005, 1006, 1015) say "(not sent by the peer)". `summary()` is what `c` copies.
"""

from __future__ import annotations

from rich.console import Group
from rich.text import Text
from textual.widgets import Static

from probes.model import ProbeModel
from tui.state import meaning, sentence
from tui.widgets.theme import status_color


def close_summary(probe: ProbeModel | None) -> str | None:
    """A paste-ready text of the probe's close (and its first diagnosis)."""
    if probe is None or probe.close is None:
        return None
    c = probe.close
    lines = [f"{probe.id}: {sentence(c)}", f"meaning: {meaning(c)}"]
    if probe.failed is not None:
        lines.append(f"failed stage: {probe.failed.name}: {probe.failed.detail}")
    for d in probe.diagnoses:
        lines.append(f"diagnosis {d.get('code')}: {d.get('summary')}")
        lines.extend(f"  · {e}" for e in d.get("evidence", []) or [])
        if d.get("next_step"):
            lines.append(f"  next: {d['next_step']}")
    return "\n".join(lines)


class _Pane(Static):
    """A Static that only re-renders (and re-lays out) when its text changed."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.plain = ""
        self._drawn: str | None = None

    def _set(self, renderable: object) -> None:
        if self.plain == self._drawn:
            return
        self._drawn = self.plain
        self.update(renderable)  # type: ignore[arg-type]


class ClosePanel(_Pane):
    """The close: code and RFC name, reason, who closed first, time since accept."""

    def _state(self, name: str) -> None:
        for cls in ("-bad", "-ok", "-none"):
            self.set_class(cls == name, cls)

    def show(self, probe: ProbeModel | None) -> None:
        if probe is None or probe.close is None:
            waiting = probe is not None and probe.status == "running"
            self.plain = "connection open…" if waiting and probe.opened else "no WebSocket close yet"
            if probe is not None and probe.status not in ("running", "queued") and not probe.opened:
                self.plain = "no WebSocket connection was opened"
            self._state("-none")
            self._set(Text(self.plain, style="dim"))
            return
        c = probe.close
        clean = c.by == "client" and c.code == 1000
        self._state("-ok" if clean else "-bad")
        color = status_color(self.app, "pass" if clean else "fail")
        head = Text(sentence(c), style=f"bold {color}")
        who = {"server": "the server closed first", "client": "the client (stagewatch, or the test) closed first",
               "none": "nobody sent a close frame: the TCP connection dropped"}.get(c.by, c.by)
        facts = Text()
        facts.append("code ", style="dim")
        facts.append(f"{c.code} {c.name}", style="bold")
        facts.append("  ·  " + ("on the wire" if c.on_wire else "not sent by the peer (reported locally)"),
                     style="" if c.on_wire else f"bold {status_color(self.app, 'error')}")
        facts.append("\nreason ", style="dim")
        facts.append(f"'{c.reason}'" if c.reason else "(none)")
        facts.append("\nby     ", style="dim")
        facts.append(who)
        facts.append("\nwhen   ", style="dim")
        facts.append(f"{c.after_ms:.0f} ms after the server accepted the upgrade")
        said = Text(meaning(c), style="italic dim")
        self.plain = "\n".join((head.plain, facts.plain, said.plain))
        self._set(Group(head, facts, said))


class DiagnosisPanel(_Pane):
    """The probe's diagnoses: code, summary, evidence, next step."""

    def show(self, probe: ProbeModel | None) -> None:
        if probe is None or not probe.diagnoses:
            if probe is not None and probe.status == "pass":
                self.plain = "nothing to diagnose: every stage passed"
            elif probe is not None and probe.status in ("fail", "error"):
                self.plain = "no rule matched this failure; see the stage detail and frames"
            else:
                self.plain = "no diagnosis yet"
            self._set(Text(self.plain, style="dim"))
            return
        parts: list[Text] = []
        bad = status_color(self.app, "fail")
        for d in probe.diagnoses:
            t = Text()
            t.append(str(d.get("code", "?")), style=f"bold {bad}")
            t.append("  " + str(d.get("summary", "")))
            for item in d.get("evidence", []) or []:
                t.append("\n  · ", style="dim")
                t.append(str(item))
            if d.get("next_step"):
                t.append("\n  next: ", style="bold")
                t.append(str(d["next_step"]))
            parts.append(t)
        self.plain = "\n".join(p.plain for p in parts)
        self._set(Group(*parts))
