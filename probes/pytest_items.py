"""A test of your own pytest suite as a queue item: its evidence, its probe id and its priority.

Shared by both sides of `stagewatch run --pytest`: the plugin inside the user's pytest process
(`probes/pytest_plugin.py`) orders tests with `priority_of`; the engine (`probes/pytest_fold.py`) names each test's
probe with `probe_id` and keeps what pytest said about a phase (setup, call, teardown) as `PytestEvidence`, which
the reports read. This module imports nothing above the evidence base, so the plugin stays light.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from .evidence import StepEvidence

PHASES = ("setup", "call", "teardown")
STEP = "pytest"  # the `step` of a phase stage (its evidence kind too); connection stages are `connect`/`expect`
# The channel between the plugin and the engine: a Unix socket in a private (0700) directory, and the plugin's
# options as JSON. Set by the engine in the environment of the pytest process (xdist workers inherit both).
SOCKET_ENV = "STAGEWATCH_PYTEST_SOCKET"
OPTIONS_ENV = "STAGEWATCH_PYTEST_OPTIONS"


@dataclass(slots=True, kw_only=True)
class PytestEvidence(StepEvidence):
    """What pytest reported for one phase of a test (or for a file it could not collect)."""

    kind = "pytest"
    nodeid: str = ""
    when: str = ""  # setup | call | teardown | collect
    outcome: str = ""  # pytest's word: passed, failed, error, skipped, xfailed, xpassed (or "not run")
    crash: str = ""  # the one line that says why: the exception and where it was raised
    longrepr: str = ""  # pytest's failure text, bounded and redacted
    reason: str = ""  # a skip's or an xfail's reason


def probe_id(nodeid: str) -> str:
    """A short, stable, unique probe id for a test: its name as a slug and 6 hex digits of its node id
    ('tests/test_ws.py::test_connects[ws]' -> 'test_connects-ws-1a2b3c')."""
    name = nodeid.rsplit("::", 1)[-1]
    slug = re.sub(r"[^a-z0-9_]+", "-", name.lower()).strip("-_")[:40].rstrip("-_") or "test"
    return f"{slug}-{hashlib.sha1(nodeid.encode('utf-8', 'replace')).hexdigest()[:6]}"


def priority_of(names: Iterable[str], markers: Iterable[str], *, by_marker: Mapping[str, int],
                by_pattern: Mapping[str, int], default: int) -> int:
    """A test's priority: the most urgent (lowest) of its markers' and of the name patterns that match any of
    `names` (the test's name, its file's name, its node id); `default` when nothing maps."""
    found = [by_marker[m] for m in markers if m in by_marker]
    names = list(names)
    found += [p for pattern, p in by_pattern.items() if any(fnmatchcase(n, pattern) for n in names)]
    return min(found) if found else default
