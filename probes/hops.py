"""Which hop answered: a response's signature (headers, an error page's body) names the proxy or load balancer that
produced it, or says it came from the backend. The signatures live in one data file (`probes/data/hops.json`),
each with the hop's usual idle timer and the next step phrased for it; stages keep the verdict as `hop` in their
evidence, the diagnosis reads it, and the reports show it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

BACKEND = "backend"


@dataclass(frozen=True)
class Signature:
    name: str
    kind: str
    headers: tuple[tuple[str, re.Pattern[str]], ...]
    body: tuple[str, ...]
    idle_s: float | None
    idle_words: str
    next: Mapping[str, str]


@cache
def signatures() -> tuple[Signature, ...]:
    """The known hops, from the data file (read once)."""
    data = json.loads(resources.files("probes").joinpath("data/hops.json").read_text("utf-8"))
    out = []
    for h in data["hops"]:
        out.append(Signature(
            h["name"], h["kind"], tuple((k.lower(), re.compile(v, re.I)) for k, v in h.get("headers", {}).items()),
            tuple(h.get("body", [])), h.get("idle_s"), h.get("idle_words", ""),
            {k[5:]: v for k, v in h.items() if k.startswith("next_")}))
    return tuple(out)


def identify(headers: Mapping[str, str] | Iterable[tuple[str, str]], body: str = "") -> dict[str, Any]:
    """The hop that most likely produced a response: `{name, kind, why, produced, idle_s, idle_words, next}` for a
    known proxy or load balancer — `produced` when its own error page says it made the answer, else the answer
    only went through it (its Server/Via mark on the backend's answer); `{name: "backend", …}` when no signature
    matches."""
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    lowered = [(k.lower(), str(v)) for k, v in pairs]
    low_body = body.lower()
    for sig in signatures():
        page = next((n for n in sig.body if n and n.lower() in low_body), None)
        mark = next((f"{_title(key)}: {value[:80]}" for name, pattern in sig.headers for key, value in lowered
                     if key == name and pattern.search(value)), None)
        if page is not None:  # its own error page: the proxy produced this answer
            return _hop(sig, f"its error page ({page[:40]!r})" + (f", {mark}" if mark else ""), produced=True)
        if mark is not None:  # its mark on a passed-on answer: the answer went through it
            return _hop(sig, mark, produced=False)
    server = next((v for k, v in lowered if k == "server"), None)
    why = f"no proxy signature (Server: {server[:60]})" if server else "no proxy signature on the response"
    return {"name": BACKEND, "kind": BACKEND, "why": why, "produced": True, "idle_s": None, "idle_words": "",
            "next": {}}


def is_proxy(hop: Mapping[str, Any] | None) -> bool:
    return bool(hop) and hop.get("kind") != BACKEND  # type: ignore[union-attr]


def words(hop: Mapping[str, Any] | None) -> str:
    """'answered by nginx (its error page …)' when the proxy produced the answer, 'through nginx (Server: …)' when
    it passed the backend's on; empty for the backend alone."""
    if not is_proxy(hop):
        return ""
    assert hop is not None
    return f"{'answered by' if hop.get('produced') else 'through'} {hop['name']} ({hop['why']})"


def _hop(sig: Signature, why: str, *, produced: bool) -> dict[str, Any]:
    return {"name": sig.name, "kind": sig.kind, "why": why, "produced": produced, "idle_s": sig.idle_s,
            "idle_words": sig.idle_words, "next": dict(sig.next)}


def _title(header: str) -> str:
    return "-".join(part.capitalize() for part in header.split("-"))
