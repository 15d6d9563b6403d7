"""Diagnosis: rules over a probe's evidence that name the most likely cause of a failure (stub; see rules)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import Protocol, Timeouts
from .evidence import Evidence


@dataclass(frozen=True)
class Diagnosis:
    code: str
    summary: str
    evidence: list[str] = field(default_factory=list)
    next_step: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "summary": self.summary, "evidence": list(self.evidence),
                "next_step": self.next_step}


def diagnose(ev: Evidence, *, expected_version: str | None = None, protocol: Protocol | None = None,
             timeouts: Timeouts | None = None) -> list[Diagnosis]:
    return []
