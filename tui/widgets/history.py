"""The history strip of a watch: one cell per round for a probe (✓ pass, ~ degraded, ✗ fail, · not run, blank
where the probe was not in the round), the monitor state beside it (UP, DEGRADED, PENDING, DOWN), and the build
lane drawn above the strips (per round, the build health reported in it: a mark and the name where it changed,
`?` where it reported none). Pure wording and Rich `Text`: the queue pane lays them out; `probes.watch.History`
decides what they say.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len
from rich.text import Text
from textual.app import App
from textual.notifications import SeverityLevel

from probes.sanitize import one_line
from probes.watch import UNREACHABLE, Flip, History, ProbeRound, Round, duration_words
from tui.widgets.theme import status_color

CELL_GLYPH = {"pass": "✓", "degraded": "~", "fail": "✗", "skip": "·", "none": " "}
CELL_WORD = {"pass": "passed", "degraded": "degraded", "fail": "failed", "skip": "not run", "none": "not in round"}
BUILD_MARK = "▏"
LANE_FILL = "─"  # over the rounds of a build after its name
LABEL_RESERVE = 12  # cells the strip may end short so that the newest build's name fits
SEVERITY_ORDER = ("DOWN", "DEGRADED", "UP", "PENDING")  # a toast of several changes names the worst first


def cell_color(app: App[object], cell: str) -> str:
    return status_color(app, {"pass": "pass", "degraded": "error", "fail": "fail"}.get(cell, "skip"))


def state_color(app: App[object], state: str | None) -> str:
    return status_color(app, {"UP": "pass", "DEGRADED": "error", "PENDING": "error", "DOWN": "fail"}.get(
        state or "", "skip"))


def state_text(app: App[object], state: str | None) -> Text:
    """The monitor state, coloured: DOWN bold red, PENDING and DEGRADED yellow, UP green, none dim."""
    if state is None:
        return Text("—", style="dim")
    return Text(state, style=f"bold {state_color(app, state)}" if state != "UP" else state_color(app, state))


def window(history: History, cells: int, selected: int | None) -> list[int]:
    """The round numbers a strip of `cells` shows: the newest, or (a past round selected out of view) the rounds
    from the selected one on. When the strip ends at the newest round and the newest build's label does not fit
    over the rounds it has, the strip ends a few cells short so the label hangs past the newest round (never
    hiding the selected round)."""
    if not history.rounds or cells <= 0:
        return []
    first, last = history.rounds[0].n, history.rounds[-1].n
    end = last
    if selected is not None and selected <= last - cells:
        end = max(first, selected) + cells - 1
    rounds = list(range(max(first, end - cells + 1), end + 1))
    if len(rounds) < cells or end != last:
        return rounds  # room to the right already, or not the newest rounds
    short = min(_label_short(history, rounds), LABEL_RESERVE, cells // 3)
    if selected is not None and selected in rounds:
        short = min(short, rounds.index(selected))
    return rounds[max(0, short):]


def _label_short(history: History, rounds: Sequence[int]) -> int:
    """Cells the newest build's label lacks at the end of `rounds` (0: it fits, or the newest rounds named none)."""
    kinds = [_lane_kind(history, n) for n in rounds]
    i = len(kinds)
    while i and kinds[i - 1][0] == "pending":
        i -= 1
    if not i or kinds[i - 1][0] != "build":
        return 0
    build = kinds[i - 1][1]
    start = i - 1
    while start and kinds[start - 1] == ("build", build):
        start -= 1
    label = _full_label(history, rounds[start], build or "")
    return cell_len(label) - (len(rounds) - start)


def _lane_kind(history: History, n: int) -> tuple[str, str | None]:
    """('build', NAME) where health reported a build in round n, ('gap', None) where it reported none, ('pending',
    None) while the round runs and health has not answered yet."""
    rnd = history.round(n)
    if rnd is None:
        return "gap", None
    if rnd.build is not None:
        return "build", rnd.build
    return ("pending" if rnd.verdict is None else "gap"), None


def _changed_at(history: History, n: int) -> bool:
    """Did health report a new build in round n (not the first build seen)?"""
    for i in range(len(history.builds) - 1, -1, -1):
        span = history.builds[i]
        if span.first_round <= n:
            return span.first_round == n and i > 0
    return False


def _full_label(history: History, n: int, build: str) -> str:
    return (BUILD_MARK if _changed_at(history, n) else "") + one_line(build)


def _tail(text: str, cells: int) -> str:
    """The longest end of `text` that takes at most `cells` cells."""
    out = ""
    for ch in reversed(text):
        if cell_len(ch + out) > cells:
            break
        out = ch + out
    return out


def _fit(build: str, changed: bool, room: int) -> str:
    """The label in `room` cells: '▏v2', else its end abbreviated ('▏…17', '▏7'); with one cell and a change, the
    build's last character alone (drawn in reverse: the mark and the name in one cell)."""
    mark = BUILD_MARK if changed else ""
    name = one_line(build)
    avail = room - cell_len(mark)
    if cell_len(name) <= avail:
        return mark + name
    if avail >= 2:
        return mark + "…" + _tail(name, avail - 1)
    if avail == 1:
        return mark + _tail(name, 1)
    return _tail(name, room)


def strip_text(app: App[object], history: History, probe_id: str, rounds: Sequence[int],
               selected: int | None) -> Text:
    """The probe's cells over `rounds`; the selected round's cell in reverse video."""
    text = Text(no_wrap=True, overflow="crop")
    for n in rounds:
        rnd = history.round(n)
        p = rnd.probes.get(probe_id) if rnd is not None else None
        cell = p.cell if p is not None else "none"
        style = cell_color(app, cell)
        if cell == "fail":
            style = f"bold {style}"
        if n == selected:
            style = f"{style} reverse"
        text.append(CELL_GLYPH.get(cell, "?"), style=style)
    return text


def build_lane(app: App[object], history: History, rounds: Sequence[int], width: int) -> Text:
    """Above the strips: the build health reported in each round, e.g. `v1────??????▏v2──▏v3`. Each run of rounds
    on one build carries its name over its first cells (after a mark `▏` where the build changed; the build the
    strip starts on has no mark) and a line over the rest; a round whose health reported no build (refused,
    503, …) is a dim `?`, never the last build's. A name longer than its rounds is abbreviated from the end
    ('▏…17'); the newest build's may hang past the newest round (`window` leaves it the room)."""
    if not rounds:
        return Text("history", style="bold")
    kinds = [_lane_kind(history, n) for n in rounds]
    if not any(kind == "build" for kind, _b in kinds):
        return Text("history"[:max(1, width)], style="bold")
    accent = app.theme_variables.get("accent", "cyan")
    lane = Text(no_wrap=True, overflow="crop")
    i = 0
    while i < len(kinds):
        kind, build = kinds[i]
        j = i
        while j < len(kinds) and kinds[j] == (kind, build):
            j += 1
        if kind == "gap":
            lane.append("?" * (j - i), style="dim")
        elif kind == "pending":
            lane.append(" " * (j - i))
        else:
            room = j - i
            if all(k == "pending" for k, _b in kinds[j:]):  # the newest build: it may hang past the strip
                room += len(kinds) - j + max(0, width - len(rounds))
            changed = _changed_at(history, rounds[i])
            label = _fit(build or "", changed, room)
            style = f"bold {accent}" if changed else "bold"
            if changed and label and not label.startswith(BUILD_MARK):
                style += " reverse"  # one cell: the name's last character stands for the mark too
            lane.append(label, style=style)
            used = cell_len(label)
            if used < j - i:
                lane.append(LANE_FILL * (j - i - used), style="dim")
            else:
                j = min(len(kinds), max(j, i + used))  # the newest name hung past its rounds, over pending ones
        i = j
    return lane


def round_result(probe_round: ProbeRound | None) -> str:
    """What a probe came to in one round, in a line: 'handshake: closed-before-ready', 'passed'."""
    if probe_round is None:
        return "not in this round"
    cell = probe_round.cell
    if cell == "fail":
        where = probe_round.stage or "?"
        return f"{where}: {probe_round.diagnosis}" if probe_round.diagnosis else f"failed at {where}"
    if cell == "degraded":
        return f"degraded: {probe_round.stage} slow" if probe_round.stage else "degraded"
    return CELL_WORD.get(cell, cell)


def summary_only(rnd: Round, probe_id: str) -> str:
    """For a round older than the ones kept whole: 'summary only: ✗ at handshake — closed-before-ready'."""
    p = rnd.probes.get(probe_id)
    if p is None:
        return f"summary only: {probe_id} was not in round {rnd.n}"
    text = f"summary only: {CELL_GLYPH.get(p.cell, '?')} {CELL_WORD.get(p.cell, p.cell)}"
    if p.stage:
        text += f" at {p.stage}"
    if p.diagnosis:
        text += f" — {p.diagnosis}"
    return text + f" (round {rnd.n}; only the last rounds are kept whole)"


def flips_toast(history: History, flips: Sequence[Flip]) -> tuple[str, SeverityLevel]:
    """A round's alerting flips in one short line for a toast, and its severity (error when a probe went DOWN,
    warning for DEGRADED): 'golden-path, event-order DOWN — closed-before-ready', 'golden-path UP — outage 12 s',
    or when the reasons differ, 'health, golden-path DOWN — see Timeline', and the states, 'event-order DOWN,
    golden-path UP — see Timeline' ('3 probes DOWN, 1 UP — see Timeline' past three probes). The timeline has the
    whole story."""
    groups: dict[tuple[str, str], list[str]] = {}  # (state, why) -> probes, in order
    for flip in flips:
        probes = groups.setdefault((flip.after, _why(history, flip)), [])
        if flip.probe not in probes:
            probes.append(flip.probe)
    states = [state for state, _why in groups]
    severity: SeverityLevel = "error" if "DOWN" in states else "warning" if "DEGRADED" in states else "information"
    if len(groups) == 1:
        ((state, why), probes), = groups.items()
        return f"{_names(probes)} {state}" + (f" — {why}" if why else ""), severity
    if len(set(states)) == 1:  # one state, for different reasons
        probes = [probe for names in groups.values() for probe in names]
        return f"{_names(list(dict.fromkeys(probes)))} {states[0]} — see Timeline", severity
    by_state: dict[str, list[str]] = {}
    for (state, _w), probes in groups.items():
        named = by_state.setdefault(state, [])
        named += [probe for probe in probes if probe not in named]
    order = sorted(by_state, key=lambda st: SEVERITY_ORDER.index(st) if st in SEVERITY_ORDER else 9)
    if sum(len(probes) for probes in by_state.values()) <= 3:  # few: name them
        return ", ".join(f"{_names(by_state[st])} {st}" for st in order) + " — see Timeline", severity
    parts = [f"{len(by_state[st])} {st}" for st in order]
    first = len(by_state[order[0]])
    parts[0] = f"{first} probe{'s' if first != 1 else ''} {order[0]}"
    return ", ".join(parts) + " — see Timeline", severity


def _names(probes: Sequence[str]) -> str:
    """'golden-path, event-order, health +2' (as the timeline says them)."""
    return ", ".join(one_line(p) for p in probes[:3]) + (f" +{len(probes) - 3}" if len(probes) > 3 else "")


def _why(history: History, flip: Flip) -> str:
    """The cause in a few words: the diagnosis code, the slow stage, the outage that ended."""
    if flip.diagnosis == UNREACHABLE:
        return "target unreachable"
    if flip.after in ("DOWN", "PENDING"):
        return one_line(flip.diagnosis) if flip.diagnosis else (f"at {one_line(flip.stage)}" if flip.stage else "")
    if flip.after == "DEGRADED":
        return f"{one_line(flip.stage)} slow" if flip.stage else ""
    if flip.before == "DOWN":
        ended = next((o for o in reversed(history.outages) if o.probe == flip.probe and o.end is not None), None)
        if ended is not None and ended.duration_s is not None:
            return f"outage {duration_words(ended.duration_s)}"
    return ""
