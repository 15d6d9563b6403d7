"""Step kinds, one module each; importing this package registers them all (`kinds()`)."""

from __future__ import annotations

import importlib
import pkgutil

from .base import StepKind, registry

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")


def kinds() -> dict[str, StepKind]:
    """Every registered step kind by its config name."""
    return registry()


__all__ = ["StepKind", "kinds"]
