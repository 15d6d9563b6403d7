"""The one boundary for text that came from outside (servers, configs, recordings, the keyboard): control
characters made visible before anything reaches a terminal, a widget, a report or the clipboard.

`visible()` keeps newline and tab and turns every other C0 control, DEL, every C1 control (U+0080–U+009F: 0x9B is
a one-byte CSI to some terminals), the bidi overrides and isolates (text that reads backwards), and the
zero-width and line/paragraph separators into `\\x1b`-style escapes, so an ESC ] 0 ; … BEL from a server prints
as the harmless text `\\x1b]0;…\\x07`. Markup is a separate matter: widgets show outside text as `Text`/`Content`,
never parsed (see the app), and `events_visible` applies this to every string an event carries.

Recordings keep the raw data (it is evidence); every reader of a recording sanitises like the live run.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, TypeVar

from .evidence import StepEvidence, evidence_from_record

T = TypeVar("T")

_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff"
                     "\ufff9-\ufffb\ue000-\ue0ff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(text: str) -> str:
    """`text` with every control character shown as an escape (newline and tab kept). Cheap when clean."""
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escape, text)


def one_line(text: str) -> str:
    """Like `visible`, and newlines/tabs shown too: for a single terminal line, an XML attribute, a title."""
    return visible(text).replace("\n", "\\n").replace("\t", "\\t")


def tree(value: T) -> T:
    """Every string inside dicts, lists and tuples made visible (keys too)."""
    return _tree(value)  # type: ignore[no-any-return]


def _tree(value: Any) -> Any:
    if isinstance(value, str):
        return visible(value)
    if isinstance(value, dict):
        return {_tree(k): _tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tree(v) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_tree(v) for v in value)
    return value


def event_visible(event: T) -> T:
    """A copy of a (dataclass) event with every string it carries made visible; evidence included. Frames (the
    one NamedTuple) are shown through `visible` where they are drawn, not copied here."""
    if not dataclasses.is_dataclass(event) or isinstance(event, type):
        return event
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        if isinstance(value, StepEvidence):
            clean = evidence_from_record(_tree(value.to_record()))
        elif isinstance(value, (str, dict, list, tuple)):
            clean = _tree(value)
        else:
            continue
        if clean != value:
            changes[f.name] = clean
    return dataclasses.replace(event, **changes) if changes else event
