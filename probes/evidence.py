"""Typed stage evidence: the base every step kind's evidence derives from, and its record form.

Each step kind (one module in `probes/steps/`) declares one `StepEvidence` subclass with `kind` set to the step's
name; defining the class registers it, so a recording or report rebuilds the right class from its record. Evidence
is already redacted when it is published. `to_record()` is a plain JSON-ready dict with a stable key per field;
`from_record()` ignores keys it does not know (a newer recording) and fills missing ones with defaults (an older
one). A record of a kind nobody registered comes back as `RawEvidence`, its fields kept as they were.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

E = TypeVar("E", bound="StepEvidence")

_KINDS: dict[str, type[StepEvidence]] = {}


@dataclass(slots=True, kw_only=True)
class StepEvidence:
    """What one stage saw. The fields every kind shares: why it failed in a word, and how it ended."""

    kind: ClassVar[str] = ""
    error: str = ""  # a category: timeout, dns, refused, reset, tls, dropped, too-large, bomb, http, os, internal
    timeout: bool = False  # the stage ran out of its announced limit
    closed: bool = False  # the connection closed under the stage
    blocked: bool = False  # the stage would have contacted a host outside the target

    def __init_subclass__(cls) -> None:  # (no super(): slots=True makes the class anew, so its cell is stale)
        if cls.kind:
            _KINDS[cls.kind] = cls

    def to_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_record() if isinstance(value, EchoCheck) else _plain(value)
        return out

    @classmethod
    def from_record(cls: type[E], record: Mapping[str, Any]) -> E:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in record.items() if k in names}
        return cls(**cls._convert(kwargs))

    @classmethod
    def _convert(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Turn record values (lists, dicts) back into field types; a kind with other nested fields extends this."""
        if "echo" in kwargs:  # connect and expect keep the header-echo check
            kwargs["echo"] = EchoCheck.from_record(kwargs["echo"])
        return kwargs


@dataclass(slots=True, kw_only=True)
class RawEvidence(StepEvidence):
    """Evidence of a kind this version does not know (e.g. a recording from a newer stagewatch)."""

    fields: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return dict(self.fields)


@dataclass(slots=True, kw_only=True)
class EchoCheck:
    """What the target's header-echo endpoint says arrived at the backend, against what we sent."""

    url: str
    status: int | None = None
    error: str = ""
    authorization_sent: bool | None = None  # None: the echo endpoint gave no header map to compare with
    subprotocol_sent: bool | None = None
    authorization_arrived: bool | None = None
    subprotocol_arrived: bool | None = None

    @property
    def compared(self) -> bool:
        return self.authorization_arrived is not None

    def lost(self) -> list[str]:
        """The credential headers we sent that the backend did not receive."""
        out = []
        if self.authorization_sent and self.authorization_arrived is False:
            out.append("Authorization")
        if self.subprotocol_sent and self.subprotocol_arrived is False:
            out.append("Sec-WebSocket-Protocol")
        return out

    def to_record(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_record(cls, record: Any) -> EchoCheck | None:
        if not isinstance(record, Mapping) or not isinstance(record.get("url"), str):
            return None
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def evidence_from_record(record: Any) -> StepEvidence | None:
    """Rebuild evidence from its record (None for none). Kinds register when `probes.steps` is imported."""
    if not isinstance(record, Mapping) or not record:
        return None
    kind = record.get("kind")
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        return RawEvidence(fields=dict(record))
    try:
        return cls.from_record(record)
    except (TypeError, ValueError):
        return RawEvidence(fields=dict(record))

