"""Snapshots of each stage's pane: a passing run, `strip-auth`, `closed-before-ready`, `version-mismatch`, and a
TLS target with a self-signed certificate (`--insecure`).

Two kinds: the text of every stage's pane (`stage_lines`, what the pane, `c` and the report show; syrupy), and
the app's picture with the Stages pane on the stage that matters (pytest-textual-snapshot). The events come from
the real engine and are normalised as in `test_tui_snapshots` (times, ports, ids, token tails, the timing split,
dates), the app's clock is frozen and the time zone is UTC, so the pictures are the same on every machine. Update
with `pytest tests/test_stage_snapshots.py --snapshot-update` after reading the new ones.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Iterator

import pytest

from probes.bus import EventBus
from probes.config import Config, resolve_target
from probes.evidence_view import stage_lines
from probes.events import Event, Frame, StageFinished, StageStarted
from probes.model import RunModel
from probes.runner import RunOptions, run_queue
from tests.test_hardening import agent_run, hostile
from tests.test_tui import SIZE, tui_config  # noqa: F401 (fixture)
from tests.test_tui_snapshots import NOW, _replace, normalise
from tui.app import StagewatchApp
from tui.widgets.frames import FrameDetail
from tui.widgets.stages import StagePane

CASES = ("passing", "strip-auth", "closed-before-ready", "version-mismatch", "tls-self-signed")
SHOWN = {"passing": "connect", "strip-auth": "connect", "closed-before-ready": "handshake",
         "version-mismatch": "health", "tls-self-signed": "connect"}  # the stage each picture opens


@pytest.fixture(scope="module", autouse=True)
def utc() -> Iterator[None]:
    """Issued and expiry times are shown in local time: UTC here, whatever the machine says."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


async def _events(config: Config, case: str, tls: ssl.SSLContext) -> list[Event]:
    bus = EventBus()
    events: list[Event] = []
    bus.subscribe(events.append)
    only = ("golden-path",)
    if case == "tls-self-signed":
        async with hostile(agent_run, ssl_context=tls) as url:
            target = resolve_target(config, url=url).model_copy(update={"verify_tls": False})
            name = target.auth.secret_env
            old = os.environ.get(name)
            os.environ[name] = "stage-snapshots-secret"  # a test's own key, for this run only
            try:
                await run_queue(config, target, bus, RunOptions(only=only))
            finally:
                if old is None:
                    del os.environ[name]
                else:
                    os.environ[name] = old
    else:
        fault = "none" if case == "passing" else case
        await run_queue(config, resolve_target(config, "sandbox"), bus, RunOptions(fault=fault, only=only))
    return consistent(normalise(events))


def consistent(events: list[Event]) -> list[Event]:
    """The normalised run on one clock: each stage lasts from its start to its finish event and each frame's ms
    counts from the end of connect, so the frames fall in the stages that read them, as in a live run."""
    started: dict[tuple[str, str], float] = {}
    accepted: float | None = None
    out: list[Event] = []
    for e in events:
        if isinstance(e, StageStarted):
            started[(e.probe_id, e.stage)] = e.t
        elif isinstance(e, StageFinished) and (e.probe_id, e.stage) in started and e.status != "skip":
            e = _replace(e, duration_ms=round((e.t - started[(e.probe_id, e.stage)]) * 1000.0, 3))
            if e.stage == "connect":
                accepted = e.t
        elif isinstance(e, Frame):  # one read before connect finished (the ready frame, often): at the upgrade
            e = _replace(e, ms=0.0 if accepted is None else round((e.t - accepted) * 1000.0, 3))
        out.append(e)
    return out


@pytest.fixture(scope="module")
def runs(tui_config: Config, self_signed: ssl.SSLContext) -> dict[str, list[Event]]:  # noqa: F811
    async def every() -> dict[str, list[Event]]:
        return {case: await _events(tui_config, case, self_signed) for case in CASES}

    return asyncio.run(every())


@pytest.mark.parametrize("case", CASES)
def test_every_stage_pane_text(case: str, runs: dict[str, list[Event]], snapshot) -> None:  # type: ignore[no-untyped-def]
    model = RunModel()
    model.apply_all(runs[case])
    probe = model.probes["golden-path"]
    panes = {name: "\n".join(stage_lines(probe, stage, NOW)) for name, stage in probe.stages.items()}
    if probe.stages["auth"].status == "pass":
        assert "eyJhbGciOi…TOKN" in panes["auth"] and "signature never shown" in panes["auth"]
    for text in panes.values():
        assert ".eyJ" not in text  # never a whole token (header.payload.signature)
    assert panes == snapshot


@pytest.mark.parametrize("case", CASES)
def test_stage_pane_picture(case: str, runs: dict[str, list[Event]], snap_compare,  # type: ignore[no-untyped-def]
                            tui_config: Config) -> None:  # noqa: F811
    """The app with the Stages pane on the stage that tells the case (picked by keyboard: `s`, then ↑/↓)."""
    app = StagewatchApp(tui_config, events=runs[case], now=lambda: NOW)
    want = SHOWN[case]

    async def pick(pilot) -> None:  # type: ignore[no-untyped-def]
        stages = app.query_one("#stages", StagePane)
        await pilot.press("s")
        for _ in range(10):
            if stages.selected == want:
                break
            order = list(app.state.probes["golden-path"].stages)
            await pilot.press("down" if order.index(want) > order.index(stages.selected or order[0]) else "up")
        await pilot.pause()
        assert stages.selected == want
        detail = app.query_one("#detail", FrameDetail).text
        assert detail.startswith(f"{want} (")  # the pane shows the picked stage's evidence
        if case == "strip-auth":
            assert "Authorization: Bearer eyJhbGciOi…TOKN" in detail and "answer: HTTP 401" in detail
        if case == "tls-self-signed":
            assert "certificate: CN=127.0.0.1" in detail and "NOT verified (--insecure), self-signed" in detail

    assert snap_compare(app, terminal_size=SIZE, run_before=pick)
