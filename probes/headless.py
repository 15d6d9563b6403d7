"""Headless mode (`stagewatch run`): one line per stage as it happens, diagnoses after the failing stage, a
verdict line, reports, and exit codes that are a contract: 0 all passed, 1 a probe failed, 2 config/usage error,
130 interrupted (Ctrl-C), 143 SIGTERM, 129 SIGHUP — each still writes the reports. Results go to stdout, problems to stderr.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from .bus import EventBus
from .closecodes import close_sentence
from .config import Config, ResolvedTarget
from .events import (Closed, Diagnosed, Event, Notice, ProbeFinished, ProbeStarted, RunFinished, RunStarted,
                     StageFinished)
from .recording import Recorder
from .redact import Redactor
from .model import RunModel
from .report import write_json, write_junit, write_markdown
from .sanitize import event_visible
from .clock import Clock
from .runner import RunOptions, run_queue

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class Printer:
    """Writes the live stage lines, reading the run from the same `RunModel` fold as the reports. Colour only
    on a terminal and when NO_COLOR is unset."""

    STATUS = {"pass": ("pass", "32"), "fail": ("FAIL", "31;1"), "error": ("ERROR", "33;1"), "skip": ("skip", "2")}

    def __init__(self, out: TextIO = sys.stdout, color: bool | None = None, verbose: bool = False,
                 insecure: bool = False) -> None:
        self.out = out
        self.insecure = insecure
        self.color = (out.isatty() and "NO_COLOR" not in os.environ) if color is None else color
        self.verbose = verbose
        self.model = RunModel()
        self.skipped: dict[str, int] = {}  # skipped stages not shown, per probe (without --verbose)

    def _c(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def _w(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def handle(self, e: Event) -> None:
        e = event_visible(e)  # outside text (details, reasons, versions, names) never reaches the terminal raw
        self.model.apply(e)
        probe = self.model.probes.get(getattr(e, "probe_id", ""))
        pad = f"   {'':<14}"
        if isinstance(e, RunStarted):
            where = e.target if e.base_url == e.target else f"{e.target} ({e.base_url})"
            insecure = self._c(" · TLS NOT VERIFIED (--insecure)", "31;1") if self.insecure else ""
            self._w(f"stagewatch → {where} · {len(e.probes)} probes{insecure}")
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

    def _verdict(self, e: RunFinished) -> str:
        this_run = [p for p in self.model.ordered() if p.runs and p.finished]
        passed = sum(p.status == "pass" for p in this_run)
        not_run = sum(p.status == "skip" for p in this_run)
        failures = [f"{p.id} at {p.failed_stage}" for p in this_run if p.status in ("fail", "error")]
        if e.verdict == "pass":
            return self._c("PASS", "32;1") + f" — {passed}/{len(this_run)} probes passed"
        if e.verdict == "interrupted":
            return self._c("INTERRUPTED", "33;1") + f" — {len(this_run)} probes finished"
        skipped = f", {not_run} not run (--fail-fast)" if not_run else ""
        return (self._c("FAIL", "31;1") + f" — {len(failures)} of {len(this_run)} probes failed"
                f" ({'; '.join(failures)}){skipped}")


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
    watch: float | None = None  # seconds between rounds; None = one round
    count: int | None = None  # rounds to run with --watch (None = until interrupted)


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


async def _stoppable(req: HeadlessRequest, summary: RunModel, recorders: list[Recorder]) -> int:
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
        return await _run(req, summary, recorders)
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


async def _run(req: HeadlessRequest, summary: RunModel, recorders: list[Recorder]) -> int:
    bus = EventBus()
    clock = Clock()
    bus.subscribe(summary.apply)
    if not req.quiet:
        bus.subscribe(Printer(verbose=req.verbose, insecure=not req.target.verify_tls).handle)
    recorder: Recorder | None = None
    if req.record_path is not None:
        redactor = Redactor(req.extra_secrets)
        recorder = Recorder(req.record_path, redactor, clock.wall, notify=bus.publish, offload=True)
        recorders.append(recorder)  # the caller reports on it even when an interrupt ends this coroutine
        bus.subscribe(recorder.handle)
        await recorder.start()
    try:
        rounds = failed_rounds = 0
        while True:
            rounds += 1
            result = await run_queue(req.config, req.target, bus, req.options, clock)
            failed_rounds += result.verdict != "pass"
            if req.watch is None or (req.count is not None and rounds >= req.count):
                break
            if not req.quiet:
                sys.stdout.write(f"— round {rounds} done ({failed_rounds} failed so far); next in {req.watch:g} s "
                                 "(Ctrl-C to stop)\n")
                sys.stdout.flush()
            await asyncio.sleep(req.watch)
        if req.watch is not None and not req.quiet:
            sys.stdout.write(f"rounds: {rounds}, failed: {failed_rounds}\n")
        if recorder is not None and not recorder.active and recorder.error and req.quiet:
            sys.stderr.write(f"stagewatch: warning: {recorder.error}\n")
        return EXIT_OK if failed_rounds == 0 else EXIT_FAILED
    finally:
        if recorder is not None:
            recorder.close()


def run_headless(req: HeadlessRequest) -> int:
    summary = RunModel()
    recorders: list[Recorder] = []
    try:
        code = asyncio.run(_stoppable(req, summary, recorders))
    except KeyboardInterrupt:
        sys.stderr.write("stagewatch: interrupted\n")
        code = EXIT_INTERRUPTED  # the reports below still say what ran before the interrupt
    except _Stopped as stopped:
        sys.stderr.write(f"stagewatch: stopped by {stopped}\n")
        code = 128 + stopped.signum  # 143 for SIGTERM, 129 for SIGHUP, as shells report them
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
