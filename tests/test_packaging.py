"""The installed package is the whole app: a wheel built from this tree holds every module and data file of
`probes/` and `tui/` (a sub-package missing from the build config crashes `stagewatch` on a fresh install)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("*.py", "*.tcss", "*.yaml", "py.typed")


def test_wheel_holds_every_module_and_data_file(tmp_path: Path) -> None:
    # Build from a clean copy: a stale build/ directory in the checkout would hide a missing package.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "*.egg-info",
                                                             "__pycache__", ".pytest_cache", ".hypothesis"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(tmp_path.glob("stagewatch-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {str(p.relative_to(ROOT)) for package in ("probes", "tui") for pattern in SHIPPED
                for p in (ROOT / package).rglob(pattern) if "__pycache__" not in p.parts}
    assert {"tui/widgets/close.py", "tui/app.tcss", "probes/default_config.yaml"} <= expected
    missing = sorted(expected - names)
    assert not missing, f"not in the wheel: {missing}"
