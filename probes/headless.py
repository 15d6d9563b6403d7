"""Headless mode (`stagewatch run`): one line per stage as it happens, diagnoses after the failing stage, a
verdict line, reports, and exit codes that are a contract: 0 all passed, 1 a probe failed, 2 config/usage error,
130 interrupted (Ctrl-C), 143 SIGTERM, 129 SIGHUP — each still writes the reports. Results go to stdout, problems to stderr.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
import time
from collections.abc import Sequence
from typing import BinaryIO, TextIO

import orjson

from .bus import EventBus, Listener
from .closecodes import close_sentence
from .config import Config, ResolvedTarget
from .evidence_view import timing_words
from .events import (Closed, Diagnosed, Event, Notice, ProbeFinished, ProbeStarted, Queued, RunFinished, RunStarted,
                     StageFinished)
from .recording import Recorder
from .redact import Redactor
from .model import ProbeModel, RunModel
from .report import write_json, write_junit, write_markdown
from . import sanitize
from .alerts import flip_payload, run_on_change
from .sanitize import event_visible, one_line
from .watch import UNREACHABLE, Flip, cause_words
from .clock import Clock
from .telemetry import Telemetry
from .runner import RunOptions, run_beside, run_queue, shared_sandbox
from .pytest_run import run_pytest

PYTEST_USAGE_ERROR = 4  # pytest's exit code for arguments it refuses

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class Printer:
    """Writes the live stage lines, reading the run from the same `RunModel` fold as the reports. Colour only
    on a terminal and when NO_COLOR is unset. In a watch (`rounds=True`) it writes one line per round and a line
    per change (flip, build) instead of the stage lines; `verbose` writes both."""

    STATUS = {"pass": ("pass", "32"), "fail": ("FAIL", "31;1"), "error": ("ERROR", "33;1"), "skip": ("skip", "2")}
    CELL = {"pass": ("✓", "32"), "degraded": ("~", "33"), "fail": ("✗", "31;1"), "skip": ("·", "2"),
            "none": (" ", "0")}
    CHANGE = {"down": ("▼", "31;1"), "pending": ("?", "33"), "up": ("▲", "32;1"), "degraded": ("~", "33"),
              "build": ("◆", "36"), "cause": ("▼", "31"), "drop": ("✕", "31"), "back": ("↺", "32")}

    def __init__(self, out: TextIO | None = None, color: bool | None = None, verbose: bool = False,
                 insecure: bool = False, rounds: bool = False, confirm: int = 2, items: str = "probes") -> None:
        out = sys.stdout if out is None else out
        self.out = out
        self.insecure = insecure
        self.color = (out.isatty() and "NO_COLOR" not in os.environ) if color is None else color
        self.verbose = verbose
        self.rounds = rounds
        self.items = items  # what the queue holds, in words: probes, or the tests of a pytest suite
        self.stages = verbose or not rounds  # the stage lines
        self.model = RunModel()
        self.model.history.configure(confirm=confirm)
        self.skipped: dict[str, int] = {}  # skipped stages not shown, per probe (without --verbose)
        self.headed: tuple[str, int] | None = None  # a pytest run: the test (and its run) written about last
        self.tests: set[str] = set()  # a queue shared with a pytest suite: its tests (Queued), shown as tests
        self._legend = False

    def _c(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def _w(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def handle(self, e: Event) -> None:
        e = event_visible(e)  # outside text (details, reasons, versions, names) never reaches the terminal raw
        self.model.apply(e)
        if self.stages:
            self._stage_lines(e)
        elif isinstance(e, Notice):
            sys.stderr.write(f"stagewatch: {e.level}: {e.message}\n")
        if self.rounds and isinstance(e, RunFinished):
            self._round_line()

    def _stage_lines(self, e: Event) -> None:
        probe = self.model.probes.get(getattr(e, "probe_id", ""))
        pad = f"   {'':<14}"
        if isinstance(e, Queued):
            self.tests.update(i for i, _, _ in e.probes)
            self._w(f"   + {len(e.probes)} test(s) of the pytest suite queued, each at its own priority")
            return
        if probe is not None and (self.items == "tests" or probe.id in self.tests) and not isinstance(
                e, (RunStarted, Notice, RunFinished)):
            self._test_lines(e, probe)
            return
        if isinstance(e, StageFinished):
            self.headed = None  # a probe's line came between: a test's next line repeats its header
        if isinstance(e, RunStarted):
            if self.rounds and self.model.history.total_rounds > 1:
                return
            where = e.target if e.base_url == e.target else f"{e.target} ({e.base_url})"
            insecure = self._c(" · TLS NOT VERIFIED (--insecure)", "31;1") if self.insecure else ""
            self._w(f"stagewatch → {where} · {len(e.probes)} {self.items}{insecure}")
        elif isinstance(e, ProbeStarted):
            self.skipped[e.probe_id] = 0
        elif isinstance(e, StageFinished):
            if e.status == "skip" and not self.verbose:
                self.skipped[e.probe_id] = self.skipped.get(e.probe_id, 0) + 1
                return
            word, code = self.STATUS[e.status]
            p = probe.priority if probe else 0
            self._w(f"P{p} {e.probe_id:<14} {e.stage:<12} {self._c(f'{word:<5}', code)} "
                    f"{e.duration_ms:>8.1f} ms  {e.detail}")
            split = timing_words(getattr(e.evidence, "timing", None)) if self.verbose else ""
            if split:  # -v: where the connect's time went
                self._w(f"   {'':<14} {'':<12} {self._c('timing', '2')}   {split}")
        elif isinstance(e, Closed):
            if e.by != "client" or e.code != 1000:
                self._w(f"{pad} {'close':<12} {self._c(close_sentence(e.code, e.reason, e.by, e.after_ms), '35')}")
        elif isinstance(e, Diagnosed):
            for d in e.diagnoses:
                self._w(f"{pad} {self._c('diagnosis', '36')}    {d['code']}: {d['summary']}")
                if self.verbose:
                    for item in d.get("evidence", []):
                        self._w(f"{pad}              · {item}")
                    if d.get("next_step"):
                        self._w(f"{pad}              next: {d['next_step']}")
        elif isinstance(e, ProbeFinished):
            n = self.skipped.get(e.probe_id, 0)
            if n and e.status != "skip":
                self._w(f"{pad} {'':<12} {self._c(f'… {n} later stage(s) not run', '2')}")
        elif isinstance(e, Notice):
            sys.stderr.write(f"stagewatch: {e.level}: {e.message}\n")
        elif isinstance(e, RunFinished):
            self._w(f"verdict: {self._verdict(e)} in {e.duration_ms / 1000:.2f} s")

    def _test_lines(self, e: Event, probe: ProbeModel | None) -> None:
        """A pytest run: a line per test (priority and node id) when it first has something to say, then its
        stage lines below it; passing setup/teardown phases and skipped connection stages only with --verbose."""
        pad = "   "
        if probe is None:
            return
        if isinstance(e, StageFinished):
            phase = e.stage in ("setup", "call", "teardown", "collect")
            if not self.verbose and ((e.status == "pass" and e.stage in ("setup", "teardown"))
                                     or (e.status == "skip" and not phase)):
                return
            self._test_header(probe)
            word, code = self.STATUS[e.status]
            self._w(f"{pad}{e.stage:<12} {self._c(f'{word:<5}', code)} {e.duration_ms:>8.1f} ms  {e.detail}")
        elif isinstance(e, Closed) and (e.by != "client" or e.code != 1000):
            self._test_header(probe)
            self._w(f"{pad}{'close':<12} {self._c(close_sentence(e.code, e.reason, e.by, e.after_ms), '35')}")
        elif isinstance(e, Diagnosed):
            self._test_header(probe)
            for d in e.diagnoses:
                self._w(f"{pad}{self._c('diagnosis', '36')}    {d['code']}: {d['summary']}")
                if self.verbose:
                    for item in d.get("evidence", []):
                        self._w(f"{pad}             · {item}")
        elif isinstance(e, ProbeFinished):
            self._test_header(probe)

    def _test_header(self, probe: ProbeModel) -> None:
        """The test's line before its first stage line, and again whenever another test's lines came between
        (pytest-xdist runs tests side by side)."""
        if self.headed != (probe.id, probe.runs):
            self.headed = (probe.id, probe.runs)
            self._w(f"P{probe.priority} {probe.name}")

    # --- a watch: a line per round, a line per change ----------------------------------------------------------
    def _round_line(self) -> None:
        model, history = self.model, self.model.history
        rnd = history.current
        if rnd is None:
            return
        ids = model.order
        if not self._legend:
            self._legend = True
            where = model.target if model.base_url == model.target else f"{model.target} ({model.base_url})"
            self._w(f"stagewatch → {where} · watching {len(ids)} probes: {' '.join(ids)}")
            self._w(self._c("  one glyph per probe in that order: ✓ pass  ~ degraded  ✗ fail  · not run; "
                            f"DOWN after {history.confirm} failing rounds in a row", "2"))
        glyphs = "".join(self._c(*self.CELL[rnd.probes[i].cell if i in rnd.probes else "none"]) for i in ids)
        build = rnd.build or (f"{model.version or '?'} (stale)" if model.version else "?")
        word, code = {"pass": ("PASS", "32;1"), "fail": ("FAIL", "31;1")}.get(rnd.verdict or "",
                                                                             ((rnd.verdict or "?").upper(), "33;1"))
        by_cause: dict[str, list[str]] = {}  # probes failing alike share a phrase
        for i in ids:
            p = rnd.probes.get(i)
            if p is not None and p.cell == "fail" and p.diagnosis != UNREACHABLE:
                by_cause.setdefault(cause_words(p.stage, p.diagnosis), []).append(i)
        failing = [f"{', '.join(names)} {cause}" for cause, names in by_cause.items()]
        unreachable = sum(1 for p in rnd.probes.values() if p.diagnosis == UNREACHABLE)
        if unreachable:
            failing.append(f"{unreachable} not attempted (unreachable)")
        took = (rnd.finished_at or rnd.started_at) - rnd.started_at
        tail = f"  {'; '.join(failing)}" if failing else ""
        self._w(f"{_clock(rnd.started_at)}  #{rnd.n:<4} {one_line(build)[:24]:<24} {glyphs}  "
                f"{self._c(f'{word:<4}', code)} {took:5.1f} s{tail}")
        for change in history.changes(rnd.n):
            glyph, colour = self.CHANGE.get(change.kind, ("·", "0"))
            names = ", ".join(change.probes)  # every name: a terminal line may be long
            line = f"{_clock(change.at)}  {self._c(glyph, colour)} {one_line(f'{names} {change.tail}'.strip())}"
            summary = self._summary(change.probe) if change.kind in ("down", "pending", "cause") else ""
            self._w(line + (f": {summary}" if summary else ""))

    def _summary(self, probe_id: str | None) -> str:
        probe = self.model.probes.get(probe_id or "")
        if probe is None or not probe.diagnoses or probe.diagnoses[0].get("code") == UNREACHABLE:
            return ""
        return one_line(str(probe.diagnoses[0].get("summary", "")))

    def _verdict(self, e: RunFinished) -> str:
        items = "probes and tests" if self.tests and self.items == "probes" else self.items
        this_run = [p for p in self.model.ordered() if p.runs and p.finished]
        passed = sum(p.status == "pass" for p in this_run)
        unreachable = sum(p.status == "skip" and any(d.get("code") == UNREACHABLE for d in p.diagnoses)
                          for p in this_run)
        not_run = sum(p.status == "skip" for p in this_run) - unreachable
        failures = [f"{p.name.rsplit('::', 1)[-1] if self.items == 'tests' or p.id in self.tests else p.id} at "
                    f"{p.failed_stage}" for p in this_run if p.status in ("fail", "error")]
        if e.verdict == "pass":
            return self._c("PASS", "32;1") + f" — {passed}/{len(this_run)} {items} passed" + (
                f", {len(this_run) - passed} skipped" if passed < len(this_run) else "")
        if e.verdict == "interrupted":
            return self._c("INTERRUPTED", "33;1") + f" — {len(this_run)} {items} finished"
        why = "not run (--fail-fast)" if self.items == "probes" else "skipped or not run"
        skipped = (f", {not_run} {why}" if not_run else "") + (
            f", {unreachable} not attempted (target unreachable)" if unreachable else "")
        return (self._c("FAIL", "31;1") + f" — {len(failures)} of {len(this_run)} {items} failed"
                f" ({'; '.join(failures)}){skipped}")


def _clock(wall: float) -> str:
    """Local wall time of day, to the second."""
    return time.strftime("%H:%M:%S", time.localtime(wall))


@dataclass
class HeadlessRequest:
    config: Config
    target: ResolvedTarget
    options: RunOptions
    json_path: Path | None = None
    junit_path: Path | None = None
    markdown_path: Path | None = None
    record_path: Path | None = None
    verbose: bool = False
    quiet: bool = False
    extra_secrets: list[str] = field(default_factory=list)
    watch: float | None = None  # seconds between round starts; None = one round
    count: int | None = None  # rounds to run with --watch (None = until interrupted)
    for_s: float | None = None  # with --watch: stop starting rounds after this long
    until_pass: bool = False  # end the watch (exit 0) at the first passing round
    until_version: str | None = None  # end the watch (exit 0) at the first passing round on this build
    jsonl_path: Path | None = None  # one JSON object per round, appended as it happens
    on_change: str | None = None  # a command given each flip as JSON on stdin
    bell: bool = True  # the terminal bell on a flip (a watch on a terminal)
    record_max_bytes: int | None = None
    pytest_args: tuple[str, ...] | None = None  # run the team's own pytest suite (these arguments) as the queue
    otlp_endpoint: str | None = None  # --otlp: a trace per probe to this OTLP/HTTP traces URL (probes.otel)
    metrics_port: int | None = None  # --metrics-port: serve /metrics here while the run lasts (probes.metrics)
    metrics_host: str = "127.0.0.1"


class _SafeStream:
    """stdout/stderr that a closed pipe cannot break: `… | tee log` and Ctrl-C kills tee first; the writes that
    follow must not raise, lose the reports or change the exit code. Once the pipe is gone, output goes nowhere."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                self._stream.write(text)
                self._stream.flush()
            except (BrokenPipeError, ConnectionResetError, ValueError):
                self._silence()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except (BrokenPipeError, ConnectionResetError, ValueError):
                self._silence()

    def isatty(self) -> bool:
        return not self.broken and self._stream.isatty()

    def _silence(self) -> None:
        self.broken = True
        try:  # the interpreter's own flush at exit must not find the dead pipe either
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        sys.stderr.write(f"stagewatch: warning: cannot write {path}: {exc.strerror or exc}\n")


class _Stopped(Exception):
    """SIGTERM or SIGHUP ended the run (as Ctrl-C does): the reports are still written."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


async def _stoppable(req: HeadlessRequest, summary: RunModel, recorders: list[Recorder],
                     listeners: Sequence[Listener] = ()) -> int:
    """`_run`, ended like Ctrl-C by SIGTERM (CI runners, `timeout`) or SIGHUP (a closed terminal)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []

    def stop(signum: int) -> None:
        if not received:
            received.append(signum)
            task.cancel()

    for signum in STOP_SIGNALS:
        try:
            loop.add_signal_handler(signum, stop, signum)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no such signal here
            pass
    try:
        return await _run(req, summary, recorders, listeners)
    except asyncio.CancelledError:
        if received:
            raise _Stopped(received[0]) from None
        raise
    finally:
        for signum in STOP_SIGNALS:
            try:
                loop.remove_signal_handler(signum)
            except (NotImplementedError, RuntimeError, ValueError):
                pass


class _Rounds:
    """After each round of a watch: the --jsonl line, the bell, --on-change, and whether the watch is over."""

    def __init__(self, req: HeadlessRequest, summary: RunModel) -> None:
        self.req, self.summary = req, summary
        self.jsonl = _open_jsonl(req.jsonl_path)
        self.ring = req.bell and req.watch is not None and not req.quiet and sys.stderr.isatty()
        self.tasks: set[asyncio.Task[None]] = set()

    async def after(self) -> bool:
        """True when the watch has reached what --until-pass / --until-version wait for."""
        history = self.summary.history
        rnd = history.current
        flips = history.take_flips()
        if rnd is None:
            return False
        if self.jsonl is not None:
            line = {**rnd.record(), "flips": [f.record() for f in flips if f.round == rnd.n]}
            try:
                self.jsonl.write(orjson.dumps(sanitize.tree(line)) + b"\n")
                self.jsonl.flush()
            except OSError as exc:
                sys.stderr.write(f"stagewatch: warning: --jsonl stopped: {exc.strerror or exc}\n")
                self.jsonl = None
        alerting = [f for f in flips if f.alerting]
        if alerting and self.ring:
            sys.stderr.write("\a")
        if self.req.on_change:
            for flip in alerting:
                task = asyncio.create_task(self._tell(flip))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        return self.landed(rnd.verdict, rnd.build)

    def landed(self, verdict: str | None, build: str | None) -> bool:
        if verdict != "pass":
            return False
        if self.req.until_version is not None:
            return build == self.req.until_version
        return self.req.until_pass

    async def _tell(self, flip: Flip) -> None:
        assert self.req.on_change is not None
        problem = await run_on_change(self.req.on_change, sanitize.tree(flip_payload(flip, self.summary.history,
                                                                                     self.summary.target)))
        if problem:
            sys.stderr.write(f"stagewatch: warning: {problem}\n")

    async def close(self) -> None:
        if self.tasks:  # each --on-change has its own deadline
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.jsonl is not None:
            self.jsonl.close()


def _open_jsonl(path: Path | None) -> BinaryIO | None:
    if path is None:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("ab")
    except OSError as exc:
        sys.stderr.write(f"stagewatch: warning: cannot write {path}: {exc.strerror or exc}\n")
        return None


async def _run(req: HeadlessRequest, summary: RunModel, recorders: list[Recorder],
               listeners: Sequence[Listener] = ()) -> int:
    bus = EventBus()
    clock = Clock()
    bus.subscribe(summary.apply)
    for listener in listeners:  # metrics and traces: after the summary, whose history the metrics read
        bus.subscribe(listener)
    watching = req.watch is not None
    if not req.quiet:
        bus.subscribe(Printer(verbose=req.verbose, insecure=not req.target.verify_tls, rounds=watching,
                              confirm=req.config.watch.confirm,
                              items="probes" if req.pytest_args is None else "tests").handle)
    recorder: Recorder | None = None
    if req.record_path is not None:
        redactor = Redactor(req.extra_secrets)
        recorder = Recorder(req.record_path, redactor, clock.wall, notify=bus.publish, offload=True,
                            max_bytes=req.record_max_bytes)
        recorders.append(recorder)  # the caller reports on it even when an interrupt ends this coroutine
        bus.subscribe(recorder.handle)
        await recorder.start()
    rounds = _Rounds(req, summary)
    deadline = None if req.for_s is None else time.monotonic() + req.for_s
    landed = False
    usage_error = False
    beside: asyncio.Future[list[ProbeFinished]] | None = None
    try:
        async with shared_sandbox(req.target, req.options) as options:  # one sandbox for every round
            if watching and req.pytest_args is None:  # held sessions run once, beside the rounds
                options = dataclasses.replace(options, holds="without")
                beside = asyncio.ensure_future(run_beside(req.config, req.target, bus, options, clock))
            try:
                n = 0
                while True:
                    n += 1
                    started = time.monotonic()
                    if req.pytest_args is None:
                        await run_queue(req.config, req.target, bus, options, clock)
                    else:
                        result = await run_pytest(req.config, req.target, bus, options, clock, req.pytest_args)
                        usage_error = result.exit_code == PYTEST_USAGE_ERROR
                    landed = await rounds.after()
                    if usage_error:
                        return EXIT_USAGE  # pytest refused its arguments: another round would too
                    if not watching or landed or (req.count is not None and n >= req.count):
                        break
                    assert req.watch is not None
                    wait = max(0.0, req.watch - (time.monotonic() - started))  # rounds start every interval
                    if deadline is not None and time.monotonic() + wait >= deadline:
                        break
                    await asyncio.sleep(wait)
            finally:  # before the shared sandbox stops: its stop would close the held sessions (1001)
                if beside is not None and not beside.done():
                    beside.cancel()
                    await asyncio.gather(beside, return_exceptions=True)
        if recorder is not None and not recorder.active and recorder.error and req.quiet:
            sys.stderr.write(f"stagewatch: warning: {recorder.error}\n")
        if req.until_version is not None or req.until_pass:
            return EXIT_OK if landed else EXIT_FAILED
        return EXIT_OK if summary.verdict == "pass" else EXIT_FAILED  # a watch's verdict is its last round's
    finally:
        await rounds.close()
        if recorder is not None:
            recorder.close()


def run_headless(req: HeadlessRequest) -> int:
    summary = RunModel()
    summary.history.configure(confirm=req.config.watch.confirm, keep_rounds=req.config.watch.keep_rounds)
    recorders: list[Recorder] = []
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _SafeStream(out), _SafeStream(err)
    telemetry = Telemetry(summary, target=req.target.name, metrics_port=req.metrics_port,
                          metrics_host=req.metrics_host, otlp_endpoint=req.otlp_endpoint, quiet=req.quiet)
    try:
        if not telemetry.start():
            return EXIT_USAGE
        if req.otlp_endpoint is not None and not req.options.trace:  # the engine names the traces it sends
            req = dataclasses.replace(req, options=dataclasses.replace(req.options, trace=True))
        try:
            code = asyncio.run(_stoppable(req, summary, recorders, telemetry.listeners))
        except KeyboardInterrupt:
            sys.stderr.write("stagewatch: interrupted\n")
            code = EXIT_INTERRUPTED  # the reports below still say what ran before the interrupt
            summary.stop()
        except _Stopped as stopped:
            sys.stderr.write(f"stagewatch: stopped by {stopped}\n")
            code = 128 + stopped.signum  # 143 for SIGTERM, 129 for SIGHUP, as shells report them
            summary.stop()
        if req.json_path:
            _write(req.json_path, write_json(summary))
        if req.junit_path:
            _write(req.junit_path, write_junit(summary))
        if req.markdown_path:
            _write(req.markdown_path, write_markdown(summary))
        for recorder in recorders:
            if recorder.error is None and not req.quiet:
                sys.stderr.write(f"stagewatch: recording: {recorder.path}\n")
        return code
    finally:
        telemetry.close()  # after the reports: the spans' flush may wait on a slow collector
        sys.stdout, sys.stderr = out, err
