"""The product's protocol messages in words: the message we send from a template, the response text a frame
carries, an error frame's message, a short excerpt."""

from __future__ import annotations

import json
from typing import Any

from .frames import get_path

ERROR_PATHS = ("payload.message", "payload.error", "data.message", "data.error", "message", "error", "detail")
RESPONSE_KEYS = ("response", "content", "text", "message", "answer")


def render(template: Any, text: str) -> Any:
    """The message template with `{text}` filled in, at any depth."""
    if isinstance(template, str):
        return template.replace("{text}", text)
    if isinstance(template, dict):
        return {k: render(v, text) for k, v in template.items()}
    if isinstance(template, list):
        return [render(v, text) for v in template]
    return template


def response_text(value: Any, paths: list[str]) -> str:
    """The first non-blank response text at one of `paths` (or one level inside it)."""
    for path in paths:
        v = get_path(value, path)
        if isinstance(v, str) and v.strip():
            return v
        if isinstance(v, dict):
            for key in RESPONSE_KEYS:
                inner = v.get(key)
                if isinstance(inner, str) and inner.strip():
                    return inner
    return ""


def excerpt(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def error_text(value: Any) -> str:
    """What an error frame says, in at most 160 characters."""
    for path in ERROR_PATHS:
        v = get_path(value, path)
        if isinstance(v, str) and v:
            return excerpt(v, 160)
    return excerpt(json.dumps(value)[:200], 160) if value is not None else "(no message)"
