"""A deploy script for the sandbox: what it serves over time, so a watch can be shown a rolling deploy.

A script is comma-separated steps `<offset> <what>[@<build>]`, e.g.
`"0s ok@v1, 5s restart, 7s closed-before-ready@v2, 12s ok@v2"` or `"0s ok@v1, 3s rolling@v2"`:

- `<offset>`: time from the sandbox's start (`0s`, `1.5s`, `500ms`, `2m`, `1h`); offsets never go back.
- `<what>`: `ok` (no fault, also `none`), any fault of `faults.FAULTS`, or `down` / `restart`: the sandbox stops listening
  (connections refused) until the next step listens again on the same port. `down` closes open sessions with
  1001 Going Away, `restart` with 1012 Service Restart (in a script `restart` is this, not the mid-run fault).
- `<what>` `rolling`: a rolling restart now (the sandbox keeps listening and serving the fault of the step before):
  503s, the open sessions closed over `drain_s` (every `drop_every`-th dropped, the rest `drain_code`), 503s
  `refuse_s` more, then the step's build answers. The step counts as applied when the rollout begins; the next
  step comes no earlier than its end. (The fault `rolling-restart` in a script schedules rollouts as the fault
  does: the first `rolling_at` seconds after its step.)
- `@<build>`: what health reports as its version from this step on; later steps keep it until one names another
  (a `rolling` step's build answers once its rollout ends).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .faults import FAULTS

STOPS: dict[str, str] = {
    "down": "stops listening (connections refused) until the next step; open sessions closed 1001 Going Away",
    "restart": "stops listening (connections refused) until the next step; open sessions closed 1012 Service "
               "Restart",
}
ROLLING = "rolling"
ROLLING_MEANING = ("rolling restart: 503s; open sessions closed in open order over the drain window, every "
                   "drop_every-th dropped (no close frame), the rest drain_code; then the build answers")
OK = "ok"
_OFFSET = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h)")
_BUILD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+/-]{0,63}")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
EXAMPLE = "0s ok@v1, 5s restart, 7s closed-before-ready@v2, 12s ok@v2"


@dataclass(frozen=True)
class DeployStep:
    """One step: at `offset` seconds from the start, serve `what` (and `build`, when given) from then on."""

    index: int  # 1-based position in the script
    offset: float  # seconds from the sandbox's start
    what: str  # "ok", a fault name, "down", "restart" or "rolling"
    build: str | None = None  # None: the build of the step before carries over
    text: str = ""  # the step as written

    @property
    def listening(self) -> bool:
        return self.what not in STOPS

    @property
    def rolling(self) -> bool:
        """A rolling restart of the open sessions (the sandbox keeps listening)."""
        return self.what == ROLLING

    @property
    def fault(self) -> str | None:
        """The fault served from this step on; None while not listening, or the fault before it (rolling)."""
        if not self.listening or self.rolling:
            return None
        return "none" if self.what == OK else self.what  # "none" itself is a fault name too

    def describe(self) -> str:
        """One line: `step 2 +5s restart — stops listening …`."""
        build = f" @{self.build}" if self.build else ""
        meaning = STOPS.get(self.what) or (ROLLING_MEANING if self.rolling else FAULTS[self.fault or "none"])
        return f"step {self.index} +{_seconds(self.offset)} {self.what}{build} — {meaning}"


def describe(steps: Sequence[DeployStep]) -> str:
    """The script, one line per step."""
    return "\n".join(step.describe() for step in steps)


def parse_deploy(text: str) -> list[DeployStep]:
    """The steps of a script; ValueError (one line naming the step) when any step is wrong."""
    parts = [p.strip() for p in text.split(",")]
    if not any(parts):
        raise ValueError(f'--deploy: empty script (give steps like "{EXAMPLE}")')
    steps: list[DeployStep] = []
    for index, part in enumerate(parts, start=1):
        try:
            step = _step(index, part)
        except ValueError as exc:
            raise ValueError(f'--deploy step {index} "{part}": {exc}') from None
        if steps and step.offset < steps[-1].offset:
            raise ValueError(f'--deploy step {index} "{part}": offset {_seconds(step.offset)} comes before the '
                             f"previous step's {_seconds(steps[-1].offset)} (offsets never go back)")
        steps.append(step)
    return steps


def _step(index: int, text: str) -> DeployStep:
    words = text.split()
    if not words:
        raise ValueError("empty step (a comma too many?)")
    if len(words) != 2:
        raise ValueError('expected "<offset> <what>[@<build>]", e.g. "5s ok@v2"')
    offset, (what, at, build) = _offset(words[0]), words[1].partition("@")
    if what != OK and what != ROLLING and what not in STOPS and what not in FAULTS:
        known = ", ".join([OK, *STOPS, *(f for f in FAULTS if f not in STOPS and f != "none"), ROLLING])
        raise ValueError(f"unknown fault {what!r} (faults: {known})")
    if at and not _BUILD.fullmatch(build):
        raise ValueError(f"bad build {build!r} (letters, digits and . _ : + / -, at most 64)")
    return DeployStep(index, offset, what, build or None, text)


def _offset(word: str) -> float:
    m = _OFFSET.fullmatch(word)
    if m is None:
        raise ValueError(f"bad offset {word!r} (like 0s, 1.5s, 500ms, 2m or 1h)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _seconds(offset: float) -> str:
    return f"{offset:g}s"
