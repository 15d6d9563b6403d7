"""The step interface: every step kind is one class in one module of this package, registered by being defined.

A kind says how long a stage of it may take (`limit`, the one function that computes it: the runner announces
that value in StageStarted and enforces it around `run`, and the step uses the same value for its own waits, so
its failure says what happened instead of a bare timeout) and runs it (`run`), returning one line and its typed
evidence, or raising `StageFailed` with both. Kinds talk to each other only through the `ProbeContext`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from ..config import Step
from ..context import ProbeContext
from ..evidence import StepEvidence

_REGISTRY: dict[str, StepKind] = {}


class StepKind(ABC):
    name: ClassVar[str]  # the config literal (`step: http`)
    evidence: ClassVar[type[StepEvidence]]  # the kind's evidence class

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if not getattr(cls, "__abstractmethods__", None):
            _REGISTRY[cls.name] = cls()

    @abstractmethod
    def limit(self, step: Step, ctx: ProbeContext) -> float:
        """Seconds a stage of this kind may take: announced, used by the step's own waits, enforced around it."""

    @abstractmethod
    async def run(self, step: Step, ctx: ProbeContext, limit: float) -> tuple[str, StepEvidence]:
        """Run the stage: (one line, evidence) on success; raise StageFailed(detail, status, evidence) if not."""


def registry() -> dict[str, StepKind]:
    return dict(_REGISTRY)
