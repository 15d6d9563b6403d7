"""Regenerate the README screenshots from the live app against the embedded sandbox.

    python docs/make_screenshots.py

Writes docs/screenshot.svg (a passing run) and docs/screenshot-closed-before-ready.svg (the demo fault), each
taken with App.save_screenshot once the run has finished, at 160x45.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from probes.config import load_config, resolve_target
from probes.runner import RunOptions
from tui.app import StagewatchApp

DOCS = Path(__file__).resolve().parent
SHOTS = {"none": "screenshot.svg", "closed-before-ready": "screenshot-closed-before-ready.svg"}


async def shoot(fault: str, filename: str) -> None:
    config = load_config(None)
    app = StagewatchApp(config, resolve_target(config, "sandbox"), RunOptions(fault=fault), None)
    async with app.run_test(size=(160, 45)) as pilot:
        deadline = time.monotonic() + 30
        while app.state.verdict is None or app.state.running:
            if time.monotonic() > deadline:
                raise SystemExit(f"the {fault} run did not finish")
            await pilot.pause(0.05)
        await pilot.pause(0.3)
        app.save_screenshot(filename, path=str(DOCS))
    print(DOCS / filename)


if __name__ == "__main__":
    for fault_name, name in SHOTS.items():
        asyncio.run(shoot(fault_name, name))
