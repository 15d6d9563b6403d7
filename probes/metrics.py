"""Prometheus metrics (`--metrics-port`): an event-bus listener that folds the run into counters, gauges and
histograms on its own `CollectorRegistry`, served as `/metrics` by prometheus_client's HTTP server (on 127.0.0.1
unless told otherwise) while a watch or a hold runs.

What it exposes (all prefixed `stagewatch_`): per probe whether it is up and its monitor state (UP, DEGRADED,
PENDING, DOWN — the watch's own History, so the metrics say what the round lines and reports say), runs by
status, stage durations (passing stages, as the watch's latency strips), stage failures, closes by code,
diagnoses, flips, outages and their seconds (growing while a probe is DOWN), rounds by verdict, the build health
reports, frames, and a hold's sessions by state with their ends, reconnect times and ping round trips.

The monitor states and outages are read from the `RunModel` given (the headless run's own fold, subscribed before
this listener) or from one this listener keeps. Events arrive on the engine's loop thread and scrapes on the
server's thread: what a scrape computes (the outage seconds) is kept under a lock. Needs the `metrics` extra
(`pip install 'stagewatch[metrics]'`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from .events import (Closed, Diagnosed, Frame, HoldTick, ProbeFinished, RunFinished, SessionChanged,
                     StageFinished)
from .model import RunModel
from .sanitize import one_line
from .watch import STATES

SESSION_STATES = ("connecting", "open", "ended", "failed", "closed")  # probes.holdfold.SessionRow.state
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RECONNECT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RTT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
UP_STATES = ("UP", "DEGRADED")


class _OutageSeconds(Collector):
    """`stagewatch_outage_seconds_total{probe}`: the seconds of the outages that ended, plus the open one's so far,
    computed at scrape time (so it grows while the probe is DOWN) and never less than it said before."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ended: dict[str, float] = {}
        self.open_since: dict[str, float] = {}  # epoch seconds the open (confirmed) outage began
        self._said: dict[str, float] = {}

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("stagewatch_outage_seconds", "Seconds the probe was DOWN (confirmed outages, "
                                     "from the start of the first failing run to the start of the first passing "
                                     "one); grows while it is down.", labels=["probe"])
        now = time.time()
        with self.lock:
            for probe in sorted({*self.ended, *self.open_since}):
                value = self.ended.get(probe, 0.0)
                since = self.open_since.get(probe)
                if since is not None:
                    value += max(0.0, now - since)
                value = max(value, self._said.get(probe, 0.0))  # a counter never goes back
                self._said[probe] = value
                family.add_metric([probe], value)
        yield family


class Metrics:
    """Subscribe `handle` to the bus (after `model.apply` when a model is given); `serve()` starts `/metrics`,
    `close()` stops it; `exposition()` is the text a scrape gets."""

    def __init__(self, model: RunModel | None = None, registry: CollectorRegistry | None = None) -> None:
        self.own_model = model is None
        self.model = RunModel() if model is None else model
        self.registry = CollectorRegistry() if registry is None else registry
        r = self.registry
        self.probe_up = Gauge("stagewatch_probe_up", "1 while the probe is UP or DEGRADED (its last run passed), 0 "
                              "while PENDING or DOWN.", ["probe"], registry=r)
        self.probe_state = Gauge("stagewatch_probe_state", "The probe's monitor state: 1 for the state it is in "
                                 "(UP, DEGRADED, PENDING, DOWN), 0 for the others.", ["probe", "state"], registry=r)
        self.runs = Counter("stagewatch_probe_runs", "Probe runs by how they ended (pass, fail, error, skip).",
                            ["probe", "status"], registry=r)
        self.stage_seconds = Histogram("stagewatch_stage_duration_seconds", "Duration of each passing stage.",
                                       ["probe", "stage"], buckets=STAGE_BUCKETS, registry=r)
        self.stage_failures = Counter("stagewatch_stage_failures", "Stages that failed or errored.",
                                      ["probe", "stage", "status"], registry=r)
        self.closes = Counter("stagewatch_close", "WebSocket closes by code and by who closed first (server, "
                              "client, none: dropped).", ["probe", "code", "by"], registry=r)
        self.diagnoses = Counter("stagewatch_diagnoses", "Diagnoses by stable code.", ["probe", "code"], registry=r)
        self.flips = Counter("stagewatch_flips", "Changes of the probe's monitor state, by the state it changed "
                             "to (the first state seen is not a flip).", ["probe", "to"], registry=r)
        self.outages = Counter("stagewatch_outages", "Confirmed outages (DOWN) that began.", ["probe"], registry=r)
        self.rounds = Counter("stagewatch_rounds", "Rounds of the queue (one run is one round), by verdict.",
                              ["verdict"], registry=r)
        self.last_round = Gauge("stagewatch_last_round_timestamp_seconds", "When the last round ended (epoch "
                                "seconds).", registry=r)
        self.build = Gauge("stagewatch_build_info", "The build the health endpoint reported last (1).", ["build"],
                           registry=r)
        self.frames = Counter("stagewatch_frames", "WebSocket messages by direction.", ["probe", "direction"],
                              registry=r)
        self.held = Gauge("stagewatch_held_sessions", "A hold's sessions by state (connecting, open, ended, failed, "
                          "closed).", ["probe", "state"], registry=r)
        self.held_ends = Counter("stagewatch_held_session_ends", "Held sessions that ended, by close code (1006: "
                                 "dropped without a close).", ["probe", "code"], registry=r)
        self.reconnect = Histogram("stagewatch_held_reconnect_seconds", "How long a held session took to come "
                                   "back.", ["probe"], buckets=RECONNECT_BUCKETS, registry=r)
        self.rtt = Histogram("stagewatch_held_ping_rtt_seconds", "Ping round trips of the held sessions.",
                             ["probe"], buckets=RTT_BUCKETS, registry=r)
        self.pings_missed = Counter("stagewatch_held_pings_missed", "Pings without a pong before the next "
                                    "heartbeat.", ["probe"], registry=r)
        self.outage_seconds = _OutageSeconds()
        r.register(self.outage_seconds)
        self._state: dict[str, str | None] = {}
        self._missed: dict[str, int] = {}
        self._build: str | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # --- the listener ---------------------------------------------------------------------------------------------
    def handle(self, event: object) -> None:
        if type(event) is Frame:  # counted from ProbeFinished: the hot path stays cheap
            return
        if self.own_model:
            self.model.apply(event)  # type: ignore[arg-type]
        if isinstance(event, StageFinished):
            if event.status == "pass":
                self.stage_seconds.labels(_l(event.probe_id), _l(event.stage)).observe(event.duration_ms / 1000)
            elif event.status in ("fail", "error"):
                self.stage_failures.labels(_l(event.probe_id), _l(event.stage), _l(event.status)).inc()
            self._build_seen(self.model.version)
        elif isinstance(event, Closed):
            self.closes.labels(_l(event.probe_id), _l(event.code), _l(event.by)).inc()
        elif isinstance(event, Diagnosed):
            for d in event.diagnoses:
                self.diagnoses.labels(_l(event.probe_id), _l(d.get("code", ""))).inc()
        elif isinstance(event, ProbeFinished):
            self._probe_finished(event)
        elif isinstance(event, RunFinished):
            self.rounds.labels(_l(event.verdict)).inc()
            self.last_round.set(time.time())
        elif isinstance(event, (SessionChanged, HoldTick)):
            self._hold(event)

    def _build_seen(self, build: str | None) -> None:
        if build is None or build == self._build:
            return
        if self._build is not None:
            self.build.remove(_l(self._build))
        self._build = build
        self.build.labels(_l(build)).set(1)

    def _probe_finished(self, e: ProbeFinished) -> None:
        pid = e.probe_id
        self.runs.labels(_l(pid), _l(e.status)).inc()
        if e.frames_in:
            self.frames.labels(_l(pid), _l("in")).inc(e.frames_in)
        if e.frames_out:
            self.frames.labels(_l(pid), _l("out")).inc(e.frames_out)
        history = self.model.history
        state = history.state(pid)
        before = self._state.get(pid)
        self._state[pid] = state
        if state is None:
            return
        self.probe_up.labels(_l(pid)).set(1 if state in UP_STATES else 0)
        for name in STATES:
            self.probe_state.labels(_l(pid), _l(name)).set(1 if name == state else 0)
        if before is not None and before != state:
            self.flips.labels(_l(pid), _l(state)).inc()
        outages = self.outage_seconds
        if state == "DOWN" and before != "DOWN":
            began = next((o for o in reversed(history.outages) if o.probe == pid and o.end is None), None)
            if began is not None:
                self.outages.labels(_l(pid)).inc()
                with outages.lock:
                    outages.open_since[pid] = began.start
        elif before == "DOWN" and state != "DOWN":
            ended = next((o for o in reversed(history.outages) if o.probe == pid and o.end is not None), None)
            with outages.lock:
                since = outages.open_since.pop(pid, None)
                if ended is not None and ended.duration_s is not None:
                    outages.ended[pid] = outages.ended.get(pid, 0.0) + ended.duration_s
                elif since is not None:
                    outages.ended[pid] = outages.ended.get(pid, 0.0) + max(0.0, time.time() - since)

    def _hold(self, e: SessionChanged | HoldTick) -> None:
        pid = e.probe_id
        if isinstance(e, SessionChanged):
            if e.change == "ended":
                self.held_ends.labels(_l(pid), _l(str(e.code if e.code is not None else 1006))).inc()
            elif e.change == "reopened" and e.reconnect_ms is not None:
                self.reconnect.labels(_l(pid)).observe(e.reconnect_ms / 1000)
        else:
            for _session, rtt in e.rtts:
                self.rtt.labels(_l(pid)).observe(rtt / 1000)
            missed = e.pings_missed - self._missed.get(pid, 0)  # the tick counts since the hold started
            if missed > 0:
                self.pings_missed.labels(_l(pid)).inc(missed)
            self._missed[pid] = e.pings_missed
        probe = self.model.probes.get(pid)
        fold = probe.hold if probe is not None else None
        if fold is None:
            return
        counts = dict.fromkeys(SESSION_STATES, 0)
        for row in fold.rows.values():
            counts[row.state] = counts.get(row.state, 0) + 1
        for state, n in counts.items():
            self.held.labels(_l(pid), _l(state)).set(n)

    # --- serving --------------------------------------------------------------------------------------------------
    def exposition(self) -> bytes:
        """What a scrape of `/metrics` answers (the Prometheus text format)."""
        return generate_latest(self.registry)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve `/metrics` on host:port (port 0: a free one) from a daemon thread; returns the port. OSError when
        the address is taken or not ours."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    @property
    def port(self) -> int | None:
        return None if self._server is None else int(self._server.server_port)

    def close(self) -> None:
        """Stop serving (the metrics stay readable through `exposition()`)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _l(value: object) -> str:
    """A label value: outside text (a build, a probe id from a config) with control characters made visible."""
    return one_line(str(value))[:200]
