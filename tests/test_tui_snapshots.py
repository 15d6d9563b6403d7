"""Snapshots of the main screen (pytest-textual-snapshot): a passing run and a `closed-before-ready` run.

The events come from the real engine against the sandbox, then every value that differs between runs (times,
durations, ports, random ids, token tails, expiry) is replaced by a fixed one, and the app's clock is frozen,
so the pictures are deterministic. Update them with `pytest tests/test_tui_snapshots.py --snapshot-update`
after checking the new pictures in the report.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from probes.bus import EventBus
from probes.config import Config, resolve_target
from probes.evidence import evidence_from_record
from probes.events import (Closed, Diagnosed, Event, Frame, HttpExchange, ProbeFinished, RunFinished, RunStarted,
                           StageFinished, WsOpened)
from probes.runner import RunOptions, run_queue
from tests.test_tui import SIZE, tui_config  # noqa: F401 (fixture)
from tui.app import StagewatchApp
from tui.widgets.queue import QueuePane

WALL0 = 1_790_000_000.0  # fixed epoch of the session
EXP = WALL0 + 900.0  # the minted token's expiry
NOW = WALL0 + 61.0  # the frozen clock: "expires in 13:59"
PORT_RE = re.compile(r"127\.0\.0\.1:\d+")
MS_RE = re.compile(r"\b\d+(\.\d+)? ms\b")
HEX_IDS = re.compile(r'"(connection_id|run_id)": "([0-9a-f]+)"')
TOKEN_RE = re.compile(r"(eyJhbGciOi|ZXlKaGJHY2)…[A-Za-z0-9_-]{4}")
STAGE_MS = {"health": 2.1, "auth": 0.2, "connect": 1.4, "handshake": 0.3, "message": 0.1, "agent": 21.0,
            "response": 0.1}
CLOSE_MS = 50.0
SPLIT = {"dns_ms": 0.1, "tcp_ms": 0.2, "tls_ms": 3.0, "upgrade_ms": 1.1}  # the connect's timing split, fixed
FIXED_HEADERS = {"date": "Tue, 01 Dec 2026 08:00:00 GMT", "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
                 "sec-websocket-accept": "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "server": "Python/3 websockets/15",
                 "user-agent": "Python/3 websockets/15"}


def _text(value: str, ms: float) -> str:
    value = PORT_RE.sub("127.0.0.1:8765", value)
    value = MS_RE.sub(f"{ms:.0f} ms", value)
    value = TOKEN_RE.sub(lambda m: m.group(1) + "…TOKN", value)
    return re.sub(r"expires in [0-9hms ]+", "expires in 15 m 0 s", value)


def _data(value: str) -> str:
    """Fixed random ids, of the same length (so frame sizes stay true)."""
    return HEX_IDS.sub(lambda m: f'"{m.group(1)}": "{("c0ffee" * 8)[: len(m.group(2))]}"', value)


def _deep(value: Any, ms: float) -> Any:
    if isinstance(value, str):
        return _text(value, ms)
    if isinstance(value, dict):
        return {k: _deep(v, ms) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_deep(v, ms) for v in value)
    return value


def headers(values: dict[str, str]) -> dict[str, str]:
    """Headers with the values that differ between runs (date, the WebSocket key, versions) fixed."""
    return {k: FIXED_HEADERS.get(k.lower(), _text(v, 1.0)) for k, v in values.items()}


def _replace(event: Any, **changes: Any) -> Any:
    """A copy of an event with some fields changed (dataclass events, or the NamedTuple Frame)."""
    if hasattr(event, "_replace"):
        return event._replace(**changes)
    return dataclasses.replace(event, **changes)


def normalise(events: list[Event]) -> list[Event]:
    """The same run with every time, port, id and token tail fixed."""
    out: list[Event] = []
    agent_i = 0
    probes = 0
    for i, e in enumerate(events):
        t = round(0.001 * i, 6)
        if isinstance(e, RunStarted):
            e = _replace(e, target=_text(e.target, 0), base_url=_text(e.base_url, 0), wall=WALL0)
        elif isinstance(e, StageFinished):
            closed = e.evidence is not None and e.evidence.closed
            ms = CLOSE_MS if closed else STAGE_MS.get(e.stage.removesuffix("-2"), 1.0)
            ev = e.evidence
            if ev is not None:
                record = _deep(ev.to_record(), ms)
                if record.get("kind") == "auth":
                    record.update(exp=EXP, iat=WALL0)
                    if "iat" in record.get("claims", {}):
                        record["claims"].update(iat=int(WALL0), exp=int(EXP))
                if isinstance(record.get("timing"), dict):
                    record["timing"] = {k: SPLIT.get(k, v) if v is not None else None
                                        for k, v in record["timing"].items()}
                    if "cert_expires" in record["timing"]:
                        record["timing"]["cert_expires"] = "2026-12-02 08:00 UTC"
                for key, value in list(record.items()):  # e.g. ms_since_accept, elapsed_ms: as measured
                    if "ms" in key.split("_") and isinstance(value, float):
                        record[key] = ms
                if isinstance(record.get("date"), str):  # the server's Date header (for clock skew)
                    record["date"] = FIXED_HEADERS["date"]
                for key in ("request_headers", "response_headers"):
                    if isinstance(record.get(key), dict):
                        record[key] = headers(record[key])
                if isinstance(record.get("events"), list):
                    record["events"] = [[name, 4.0 * (k + 1)] for k, (name, _ms) in enumerate(record["events"])]
                ev = evidence_from_record(record)
            duration = 0.0 if e.status == "skip" else ms
            e = _replace(e, duration_ms=duration, detail=_text(e.detail, ms), evidence=ev)
        elif isinstance(e, Frame):
            agent_i += 1
            data = _data(e.data) if isinstance(e.data, str) else e.data
            e = _replace(e, ms=0.5 + 4.0 * agent_i, data=data, size=len(data) if isinstance(data, str)
                                    else e.size)
        elif isinstance(e, Closed):
            e = _replace(e, after_ms=CLOSE_MS if e.by == "server" else 25.0)
        elif isinstance(e, Diagnosed):
            e = _replace(e, diagnoses=tuple(_deep(dict(d), CLOSE_MS) for d in e.diagnoses))
        elif isinstance(e, ProbeFinished):
            agent_i = 0
            probes += 1
            e = _replace(e, duration_ms=0.0 if e.status == "skip" else 12.0 * probes)
        elif isinstance(e, RunFinished):
            e = _replace(e, duration_ms=180.0)
        elif isinstance(e, HttpExchange):
            e = _replace(e, url=_deep(e.url, 1.0), elapsed_ms=1.0, headers=headers(e.headers))
        elif isinstance(e, WsOpened):
            e = _replace(e, url=_deep(e.url, 1.0), request_headers=headers(e.request_headers),
                         response_headers=headers(e.response_headers))
        out.append(_replace(e, t=t))
    return out


async def _engine_events(config: Config, fault: str) -> list[Event]:
    bus = EventBus()
    events: list[Event] = []
    bus.subscribe(events.append)
    await run_queue(config, resolve_target(config, "sandbox"), bus, RunOptions(fault=fault))
    return normalise(events)


@pytest.fixture(scope="module")
def passing_events(tui_config: Config) -> list[Event]:  # noqa: F811
    import asyncio

    return asyncio.run(_engine_events(tui_config, "none"))


@pytest.fixture(scope="module")
def closed_before_ready_events(tui_config: Config) -> list[Event]:  # noqa: F811
    import asyncio

    return asyncio.run(_engine_events(tui_config, "closed-before-ready"))


def _app(config: Config, events: list[Event]) -> StagewatchApp:
    return StagewatchApp(config, events=events, now=lambda: NOW)


SIZES = {"80x24": (80, 24), "120x35": (120, 35), "160x45": (160, 45)}  # the sizes the layout is made for


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_passing_run(snap_compare, tui_config, passing_events, size):  # noqa: F811
    """The whole queue green; the golden path focused with every stage passed, its frames and its clean close."""
    app = _app(tui_config, passing_events)

    async def check(pilot: object) -> None:
        assert app.state.verdict == "pass" and app.focus_probe == "golden-path"
        assert app.query_one("#queue", QueuePane).probe_at_cursor() == "golden-path"  # the queue shows the focus
        assert "expires in 13:59" in app.query_one("#header").plain or size == "80x24"  # the frozen clock

    assert snap_compare(app, terminal_size=SIZES[size], run_before=check)


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_closed_before_ready(snap_compare, tui_config, closed_before_ready_events, size):  # noqa: F811
    """The golden path focused (first failure): handshake red, the close 1000 'main cleanup' by the server 50 ms
    after accept, and the closed-before-ready diagnosis — at 80×24 too: the compact queue names it."""
    app = _app(tui_config, closed_before_ready_events)

    async def check(pilot: object) -> None:
        assert app.focus_probe == "golden-path"
        assert app.query_one("#queue", QueuePane).probe_at_cursor() == "golden-path"
        close = app.query_one("#close").plain
        assert "1000 Normal Closure — 'main cleanup' — server closed 50 ms after accept" in close

    assert snap_compare(app, terminal_size=SIZES[size], run_before=check)
