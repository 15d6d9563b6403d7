"""Headless mode (`stagewatch run`): one line per stage as it happens, diagnoses after the failing stage, a
verdict line, reports, and exit codes that are a contract: 0 all passed, 1 a probe failed, 2 config/usage error,
130 interrupted. Results go to stdout, problems to stderr.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from .bus import EventBus
from .closecodes import label
from .config import Config, ResolvedTarget
from .events import (Closed, Diagnosed, Event, Notice, ProbeFinished, ProbeStarted, RunFinished, RunStarted,
                     StageFinished)
from .recording import Recorder
from .redact import Redactor
from .report import RunSummary, write_json, write_junit, write_markdown
from .runner import Clock, RunOptions, run_queue

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class Printer:
    """Writes the live stage lines. Colour only on a terminal and when NO_COLOR is unset."""

    STATUS = {"pass": ("pass", "32"), "fail": ("FAIL", "31;1"), "error": ("ERROR", "33;1"), "skip": ("skip", "2")}

    def __init__(self, out: TextIO = sys.stdout, color: bool | None = None, verbose: bool = False,
                 insecure: bool = False) -> None:
        self.out = out
        self.insecure = insecure
        self.not_run = 0
        self.color = (out.isatty() and "NO_COLOR" not in os.environ) if color is None else color
        self.verbose = verbose
        self.priority: dict[str, int] = {}
        self.skipped: dict[str, int] = {}
        self.failures: list[str] = []
        self.count = 0
        self.passed = 0

    def _c(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def _w(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def handle(self, e: Event) -> None:
        if isinstance(e, RunStarted):
            self.failures, self.count, self.passed, self.not_run = [], 0, 0, 0
            where = e.target if e.base_url == e.target else f"{e.target} ({e.base_url})"
            insecure = self._c(" · TLS NOT VERIFIED (--insecure)", "31;1") if self.insecure else ""
            self._w(f"stagewatch → {where} · {len(e.probes)} probes{insecure}")
        elif isinstance(e, ProbeStarted):
            self.priority[e.probe_id] = e.priority
            self.skipped[e.probe_id] = 0
        elif isinstance(e, StageFinished):
            if e.status == "skip" and not self.verbose:
                self.skipped[e.probe_id] = self.skipped.get(e.probe_id, 0) + 1
                return
            word, code = self.STATUS[e.status]
            p = self.priority.get(e.probe_id, 0)
            self._w(f"P{p} {e.probe_id:<14} {e.stage:<12} {self._c(f'{word:<5}', code)} "
                    f"{e.duration_ms:>8.1f} ms  {e.detail}")
        elif isinstance(e, Closed):
            if e.by != "client" or e.code != 1000:
                who = {"server": "by the server", "client": "by us", "none": "no close frame"}[e.by]
                reason = f" '{e.reason}'" if e.reason else ""
                self._w(f"   {'':<14} {'close':<12} {self._c(label(e.code), '35')}{reason} — {who}, "
                        f"{e.after_ms:.0f} ms after accept")
        elif isinstance(e, Diagnosed):
            for d in e.diagnoses:
                self._w(f"   {'':<14} {self._c('diagnosis', '36')}    {d['code']}: {d['summary']}")
                if self.verbose:
                    for item in d.get("evidence", []):
                        self._w(f"   {'':<14}              · {item}")
                    if d.get("next_step"):
                        self._w(f"   {'':<14}              next: {d['next_step']}")
        elif isinstance(e, ProbeFinished):
            self.count += 1
            if e.status == "pass":
                self.passed += 1
            elif e.status == "skip":
                self.not_run += 1
            else:
                self.failures.append(f"{e.probe_id} at {e.failed_stage}")
            n = self.skipped.get(e.probe_id, 0)
            if n and e.status != "skip":
                self._w(f"   {'':<14} {'':<12} {self._c(f'… {n} later stage(s) not run', '2')}")
        elif isinstance(e, Notice):
            sys.stderr.write(f"stagewatch: {e.level}: {e.message}\n")
        elif isinstance(e, RunFinished):
            if e.verdict == "pass":
                verdict = self._c("PASS", "32;1") + f" — {self.passed}/{self.count} probes passed"
            elif e.verdict == "interrupted":
                verdict = self._c("INTERRUPTED", "33;1") + f" — {self.count} probes finished"
            else:
                skipped = f", {self.not_run} not run (--fail-fast)" if self.not_run else ""
                verdict = (self._c("FAIL", "31;1") + f" — {len(self.failures)} of {self.count} probes failed"
                           f" ({'; '.join(self.failures)}){skipped}")
            self._w(f"verdict: {verdict} in {e.duration_ms / 1000:.2f} s")


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


async def _run(req: HeadlessRequest, summary: RunSummary, recorders: list[Recorder]) -> int:
    bus = EventBus()
    clock = Clock()
    bus.subscribe(summary.handle)
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
    summary = RunSummary()
    recorders: list[Recorder] = []
    try:
        code = asyncio.run(_run(req, summary, recorders))
    except KeyboardInterrupt:
        sys.stderr.write("stagewatch: interrupted\n")
        code = EXIT_INTERRUPTED  # the reports below still say what ran before the interrupt
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
