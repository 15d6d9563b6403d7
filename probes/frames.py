"""Reading WebSocket messages: classify (JSON / text / binary), find the protocol type, summarise in one line.

Never raises, whatever a server sends: invalid JSON, binary, huge or deeply nested payloads all classify.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import orjson

from .sanitize import one_line

SUMMARY_CHARS = 120
_PARSE_LIMIT = 256 * 1024  # larger text frames are not parsed for display
_JSON_START = re.compile(r"[ \t\r\n]*[\[{]")  # an object or array, without copying the text
# orjson reads ASCII JSON 2-4x faster than json.loads, with the same values, except integers past 64 bits (it
# makes them floats: a run of 19 digits sends the text to json.loads). Non-ASCII text and long text go to json.loads
# directly: there orjson's UTF-8 conversion (or the digit check) costs more than it saves.
_FAST_MAX = 4096
_DIGITS_AS_0 = bytes.maketrans(b"123456789", b"000000000")
_LONG_INT = b"0" * 19
_loads = orjson.loads


@dataclass(frozen=True, slots=True)
class FrameInfo:
    kind: str  # "json", "text", "binary"
    type: str | None  # the protocol type field of a JSON object, if any
    summary: str
    value: Any = None  # the parsed JSON (only for kind == "json")


def parse_json(data: str | bytes) -> Any:
    """The parsed JSON object or array, or None for anything else (never raises: bad JSON, binary, deep
    nesting and oversized numbers all give None)."""
    if not isinstance(data, str) or not _JSON_START.match(data):
        return None
    if len(data) <= _FAST_MAX and data.isascii():
        raw = data.encode("ascii")
        if _LONG_INT not in raw.translate(_DIGITS_AS_0):
            try:
                return _loads(raw)
            except (ValueError, MemoryError):  # what orjson refuses but Python reads (NaN, 1e400, "\\ud800"
                pass  # escapes, deep nesting) or what nothing reads: json.loads has the last word
    try:
        return json.loads(data)
    except (ValueError, RecursionError, MemoryError):
        return None


def get_path(value: Any, dotted: str) -> Any:
    """value['a']['b'] for 'a.b'; None where any part is missing."""
    for part in dotted.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isascii() and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def frame_type(value: Any, type_field: str = "type") -> str | None:
    if isinstance(value, dict):
        t = value.get(type_field)
        if isinstance(t, str):
            return t
    return None


def _one_line(text: str, limit: int = SUMMARY_CHARS) -> str:
    flat = " ".join(text[: limit * 8].split())  # never flatten a 10 MB frame to show 120 characters
    flat = one_line(flat)  # control characters shown as escapes (\x1b), as everywhere else
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        short = value[:40] + ("…" if len(value) > 40 else "")
        return short if short and not any(c.isspace() or c in '="' for c in short) else json.dumps(short,
                                                                                                   ensure_ascii=False)
    if isinstance(value, list):
        return f"[{len(value)} items]"
    if isinstance(value, dict):
        return "{…}"
    return json.dumps(value)


def _brief(value: Any) -> str:
    """A one-line rendering of a JSON value as `path=value` leaves, e.g. `run_id=c0ffee thought="Looking…"`.

    A lone wrapper ({"payload": {...}}) is unwrapped; nesting shows as dotted paths; it stops once the line is
    long enough for a summary, so huge or deep values cost no more than short ones.
    """
    if not isinstance(value, dict):
        return _scalar(value)
    while len(value) == 1 and isinstance(next(iter(value.values())), dict):
        value = next(iter(value.values()))
    parts: list[str] = []
    length = 0
    stack: list[tuple[str, Any, int]] = [(str(k), v, 0) for k, v in reversed(list(value.items())[:12])]
    while stack and length < SUMMARY_CHARS:
        path, item, depth = stack.pop()
        if isinstance(item, dict) and item and depth < 2:
            stack.extend((f"{path}.{k}", v, depth + 1) for k, v in reversed(list(item.items())[:12]))
            continue
        part = f"{path}={_scalar(item)}"
        parts.append(part)
        length += len(part) + 1
    return " ".join(parts) + (" …" if stack else "")


def classify(data: str | bytes, type_field: str = "type") -> FrameInfo:
    """Kind, protocol type and a one-line summary of a message; never raises."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        size = data.nbytes if isinstance(data, memoryview) else len(data)
        head = bytes(data[:16]).hex(" ")
        return FrameInfo("binary", None, f"binary {size} B: {head}{' …' if size > 16 else ''}")
    if len(data) <= _PARSE_LIMIT:
        value = parse_json(data)
        if value is not None or data.strip() == "null":
            t = frame_type(value, type_field)
            if isinstance(value, dict):
                rest = {k: v for k, v in value.items() if k != type_field}
                body = _brief(rest) if rest else ""
                summary = f"{t} {body}" if t else body
            else:
                summary = _brief(value)
            return FrameInfo("json", t, _one_line(summary), value)
    if len(data) > _PARSE_LIMIT:  # too big to parse on the display path: its type from its first bytes, if stated
        found = _HEAD_TYPE.match(data[:512]) if type_field == "type" else None
        if found is not None:
            t = found.group(1)
            return FrameInfo("json", t, _one_line(f"{t} ({len(data):,} characters, not parsed)"))
    return FrameInfo("text", None, _one_line(data))


_HEAD_TYPE = re.compile(r'\s*\{\s*"type"\s*:\s*"([A-Za-z0-9_.:-]{1,64})"')


def pretty(data: str | bytes, limit: int = 64 * 1024) -> str:
    """Indented JSON, or the text as is, or a hex dump for binary; capped at `limit` characters."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data[: limit // 3])
        lines = [f"{i:08x}  {raw[i:i + 16].hex(' ')}" for i in range(0, len(raw), 16)]
        return "\n".join(lines) + (f"\n… {len(data) - len(raw)} more bytes" if len(data) > len(raw) else "")
    value = parse_json(data) if len(data) <= _PARSE_LIMIT else None
    if value is not None:
        try:
            text = json.dumps(value, indent=2, ensure_ascii=False)
        except (ValueError, RecursionError, MemoryError):
            text = data
    else:
        text = data
    return text if len(text) <= limit else text[:limit] + f"\n… {len(text) - limit} more characters"
