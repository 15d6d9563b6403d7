"""The shape the code keeps: no import circles, step kinds registered in one place and matching the config's
literal, every kind's evidence surviving its record (recordings, reports, replay), and `probes/` type-clean."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import grimp
import pytest

from probes.config import StepKind as StepLiteral
from probes.events import StageFinished, from_record, to_record
from probes.evidence import EchoCheck, RawEvidence, StepEvidence, evidence_from_record
from probes.steps import kinds

ROOT = Path(__file__).resolve().parent.parent


def _cycles(package: str) -> list[tuple[str, str]]:
    graph = grimp.build_graph(package, exclude_type_checking_imports=True)  # runtime imports
    found = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            if imported == importer or imported.startswith(importer + ".") or importer.startswith(imported + "."):
                continue  # a package and its own submodules (an __init__ registering them) is not a circle
            chain = graph.find_shortest_chain(importer=imported, imported=importer)
            if chain:
                found.append((importer, " -> ".join(chain)))
    return found


@pytest.mark.parametrize("package", ["probes", "tui"])
def test_no_module_imports_itself_through_others(package):
    assert _cycles(package) == []


def test_every_config_step_literal_has_exactly_one_kind():
    registered = kinds()
    assert set(typing.get_args(StepLiteral)) == set(registered)
    for name, kind in registered.items():
        assert kind.name == name and kind.evidence.kind == name  # evidence records name their kind


@pytest.mark.parametrize("name", sorted(kinds()))
def test_each_kinds_evidence_survives_its_record(name):
    cls = kinds()[name].evidence
    values: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        hint = str(f.type)
        if f.name == "echo":
            values[f.name] = EchoCheck(url="/debug/echo-headers", status=200, authorization_sent=True,
                                       authorization_arrived=False)
        elif f.name == "events":
            values[f.name] = [("agent_started", 1.5), ("agent_completed", 9.0)]
        elif hint.startswith("bool"):
            values[f.name] = True
        elif hint.startswith("int"):
            values[f.name] = 7
        elif hint.startswith("float"):
            values[f.name] = 2.5
        elif hint.startswith("str"):
            values[f.name] = f"{f.name}-value"
        elif hint.startswith("list"):
            values[f.name] = ["a", "b"]
        elif hint.startswith("dict"):
            values[f.name] = {"k": "v"}
    ev = cls(**values)  # type: ignore[arg-type]
    event = StageFinished(1.0, "p", "s", "fail", 2.0, "detail", ev)
    back = from_record(to_record(event))
    assert back == event and type(back.evidence) is cls
    assert back.evidence.to_record()["kind"] == name


def test_unknown_evidence_kind_is_kept_raw():
    ev = evidence_from_record({"kind": "from-the-future", "x": 1})
    assert isinstance(ev, RawEvidence) and ev.to_record() == {"kind": "from-the-future", "x": 1}
    assert evidence_from_record({}) is None and evidence_from_record(None) is None
    assert isinstance(evidence_from_record({"kind": "http", "http_status": "not-a-number"}), StepEvidence)


def test_import_linter_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter not installed")
    proc = subprocess.run([str(lint)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " 0 broken" in proc.stdout


def test_the_engine_is_type_clean():
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent))
    if mypy is None:
        pytest.skip("mypy not installed")
    proc = subprocess.run([mypy], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
