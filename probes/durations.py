"""Durations as people write them in a config or on the command line: 10s, 500ms, 2m, 1h (a bare number is
seconds). A leaf: the config, the watch and the CLI all read durations through it."""

from __future__ import annotations

import re

__all__ = ["parse_duration"]

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """'10s', '2' (seconds), '500ms', '1.5m', '2h' -> seconds; ValueError with one line otherwise."""
    m = _DURATION_RE.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not a duration (say 10s, 500ms, 2m or 1h; a bare number is seconds)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]
