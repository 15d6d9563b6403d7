"""`run_pytest`: the team's own pytest suite as the priority queue. The engine's entry for it, beside `run_queue`,
with the same signature plus the pytest arguments and the same events (RunStarted … RunFinished), so every front
end (headless, the app, the recorder, the reports) shows a test as it shows a probe.

It starts the embedded sandbox for a sandbox target (honouring the run's fault), opens a Unix socket in a private
0700 directory, and runs `sys.executable -m pytest -p probes.pytest_plugin [-x] ARGS` with, in its environment:

- `STAGEWATCH_BASE_URL`, `STAGEWATCH_WS_URL`, `STAGEWATCH_TARGET`, `STAGEWATCH_VERIFY_TLS` (`0` under
  `--insecure`), and for the sandbox its signing key in the variable the config names (`auth.secret_env`, default
  `JWT_SECRET_KEY`): what the suite's conftest reads;
- `STAGEWATCH_PYTEST_SOCKET` and `STAGEWATCH_PYTEST_OPTIONS` (JSON: the config's `pytest` section, the run's
  `max_priority` and `only` — probe ids, so a front end reruns one test as it reruns one probe): what the plugin
  reads.

The plugin's messages (one JSON line each, from pytest and from every xdist worker) are folded into events by
`probes/pytest_fold.py`. As an entry of a queue shared with probes (config `kind: pytest`), `Suite` runs pytest
once per priority band the runner gives it (`probes/runner.py`, `plan`). pytest's own output is kept (the last lines) and shown as a notice when pytest stops for
a reason of its own (usage error, internal error, nothing collected). Cancelling the coroutine stops pytest (SIGINT,
then SIGKILL of its process group after a grace period) and ends the run as `interrupted`, like run_queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .bus import EventBus
from .clock import Clock
from .config import Config, ResolvedTarget
from .context import ws_url_for
from .events import ProbeFinished, RunFinished
from .pytest_fold import SuiteFold
from .pytest_items import OPTIONS_ENV, SOCKET_ENV
from .redact import Redactor
from .options import RunOptions, RunResult, run_fault, run_redactor, sandbox_options
from .sandbox import Sandbox

PLUGIN = "probes.pytest_plugin"
OUTPUT_LINES = 40  # pytest's own last lines kept for a notice
STOP_GRACE_S = 5.0  # after SIGINT, before the process group is killed
DRAIN_S = 5.0  # after pytest exits, for the last messages of its processes
MAX_LINE = 4 * 2**20  # one channel message (the plugin bounds them far below this)
OUR_PYTEST_VARS = ("PYTEST_CURRENT_TEST", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID")
EXIT_WORDS = {2: "interrupted (e.g. errors during collection)", 3: "internal error", 4: "usage error",
              5: "no tests collected"}


@dataclass
class PytestResult(RunResult):
    exit_code: int | None = None  # pytest's own exit code (4: usage error)


def plugin_options(config: Config, target: ResolvedTarget, options: RunOptions,
                   band: tuple[int, int | None] | None = None) -> dict[str, object]:
    s = config.pytest
    return {"markers": dict(s.markers), "patterns": dict(s.patterns), "default_priority": s.default_priority,
            "max_priority": options.max_priority, "only": list(options.only), "max_frames": s.max_frames,
            "frame_bytes": s.frame_bytes, "longrepr_chars": s.longrepr_chars, "secret_env": target.auth.secret_env,
            "band": None if band is None else list(band)}


def pytest_command(args: Sequence[str], fail_fast: bool = False) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", PLUGIN, *(["-x"] if fail_fast else []), *args]


async def run_pytest(config: Config, target: ResolvedTarget, bus: EventBus, options: RunOptions | None = None,
                     clock: Clock | None = None, args: Sequence[str] = ()) -> PytestResult:
    """Run the suite (pytest `args`) against `target`, publishing RunStarted … RunFinished on `bus`. For a sandbox
    target: `options.sandbox` if given (used, never stopped here), else one started and stopped here."""
    options = options or RunOptions()
    clock = clock or Clock()
    if not target.is_sandbox:
        return await _run(config, target, bus, options, clock, args, target.base_url, None)
    if options.sandbox is not None:
        return await _run(config, target, bus, options, clock, args, options.sandbox.base_url,
                          options.sandbox.secret)
    sandbox = await Sandbox(sandbox_options(target, options)).start()
    try:
        return await _run(config, target, bus, options, clock, args, sandbox.base_url, sandbox.secret)
    finally:
        await sandbox.stop()


async def _run(config: Config, target: ResolvedTarget, bus: EventBus, options: RunOptions, clock: Clock,
               args: Sequence[str], base_url: str, secret: str | None) -> PytestResult:
    env = os.environ if options.env is None else options.env
    suite = Suite(config, target, bus, clock, options, args, base_url, secret, run_redactor(target, env, secret))
    started = time.monotonic()
    try:
        exit_code = await suite.run()
        suite.fold.end("not run: --fail-fast" if options.fail_fast and suite.fold.failed
                       else f"not run: pytest ended (exit code {exit_code})")
    except asyncio.CancelledError:
        bus.publish(RunFinished(clock(), "interrupted", round((time.monotonic() - started) * 1000, 1)))
        raise
    verdict = "fail" if suite.fold.failed or exit_code != 0 else "pass"
    bus.publish(RunFinished(clock(), verdict, round((time.monotonic() - started) * 1000, 1)))  # type: ignore[arg-type]
    return PytestResult(verdict, suite.fold.results, base_url, exit_code)


class Suite:
    """One pytest suite run against one base URL, folded by one `SuiteFold`.

    Alone (`stagewatch pytest`), it is the whole run: `run()` once. As an entry of a queue shared with probes
    (`embedded`, config `kind: pytest`), the runner gives it priority bands between the probes' own priorities —
    `run((lo, hi))` runs pytest once for the tests of priority lo..hi — so tests and probes go P0 first together;
    the first band's collection tells which later bands hold tests (`wants`), and `finish` ends the entry.
    """

    def __init__(self, config: Config, target: ResolvedTarget, bus: EventBus, clock: Clock, options: RunOptions,
                 args: Sequence[str], base_url: str, secret: str | None, redactor: Redactor, *,
                 embedded: bool = False, name: str = "pytest") -> None:
        self.config, self.target, self.options, self.args = config, target, options, tuple(args)
        self.base_url, self.secret, self.name, self.embedded = base_url, secret, name, embedded
        self.fold = SuiteFold(bus, clock, target, base_url, redactor, default_priority=config.pytest.default_priority,
                              embedded=embedded)
        self.fold.fault = run_fault(target, options)
        self.collected_once = False  # a band ran and collected: `fold.waiting` now says what later bands hold
        self.broken = False  # pytest itself failed (usage, internal or collection error): no more bands
        self.exit_code: int | None = None

    def wants(self, lo: int, hi: int | None) -> bool:
        """Whether a band lo..hi (None: no upper end) may hold tests still to run."""
        if self.broken or (hi is not None and (hi < lo or hi < 0)):
            return False
        if self.options.max_priority is not None and lo > self.options.max_priority:
            return False
        if not self.collected_once:
            return True
        return any(lo <= p and (hi is None or p <= hi) for _, p in self.fold.waiting.values())

    async def run(self, band: tuple[int, int | None] | None = None) -> int | None:
        """One pytest process (for `band`'s tests, embedded); returns its exit code. Its tests that did not run
        end as not run. Cancelled: pytest is stopped and its running test ends as interrupted."""
        env = dict(os.environ if self.options.env is None else self.options.env)
        for name in OUR_PYTEST_VARS:  # they describe a pytest around us (our own tests, a worker), not the suite's
            env.pop(name, None)
        fold = self.fold
        fold.band_started()
        readers: set[asyncio.Task[None]] = set()
        output: deque[str] = deque(maxlen=OUTPUT_LINES)

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:
                readers.add(task)
            try:
                while True:
                    try:
                        line = await reader.readline()
                    except ValueError:  # over MAX_LINE: skipped, the next line is read
                        continue
                    if not line:
                        return
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(msg, dict):
                        fold.handle(msg)
            finally:
                writer.close()

        private = Path(tempfile.mkdtemp(prefix="stagewatch-pytest-"))  # mode 0700: only we can reach the socket
        server: asyncio.AbstractServer | None = None
        proc: asyncio.subprocess.Process | None = None
        try:
            socket_path = str(private / "events.sock")
            server = await asyncio.start_unix_server(serve, path=socket_path, limit=MAX_LINE)
            plugin = plugin_options(self.config, self.target, self.options, band)
            env.update({SOCKET_ENV: socket_path, OPTIONS_ENV: json.dumps(plugin),
                        "STAGEWATCH_BASE_URL": self.base_url, "STAGEWATCH_WS_URL": ws_url_for(self.target, self.base_url),
                        "STAGEWATCH_TARGET": self.target.name,
                        "STAGEWATCH_VERIFY_TLS": "1" if self.target.verify_tls else "0"})
            if self.secret:
                env[self.target.auth.secret_env] = self.secret
            proc = await asyncio.create_subprocess_exec(
                *pytest_command(self.args, self.options.fail_fast), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True)
            assert proc.stdout is not None
            await _keep_tail(proc.stdout, output)
            code = await proc.wait()
            await _drain(readers)
            exit_code = fold.exitstatus if fold.exitstatus is not None else code
            self.exit_code = exit_code
            self.collected_once = self.collected_once or exit_code in (0, 1, 5)  # `later` listed the rest
            quiet = self.embedded and exit_code == 5  # a band with no tests of its priorities: nothing to say
            if exit_code not in (0, 1) and not quiet:
                self.broken = True
                tail = "\n".join(line for line in output if line.strip())
                fold.begin()
                where = f" ({self.name})" if self.embedded else ""
                fold.notice("error" if exit_code in (3, 4) else "warning",
                            f"pytest{where} exited {exit_code} ({EXIT_WORDS.get(exit_code, 'see its output')})"
                            + (f"; its last lines:\n{tail}" if tail else ""))
            if not self.embedded:
                return exit_code
            fold.end("not run: --fail-fast" if self.options.fail_fast and fold.failed
                     else f"not run: pytest ended (exit code {exit_code})")
            return exit_code
        except asyncio.CancelledError:
            if proc is not None:
                await _stop(proc)
            await _drain(readers, 1.0)
            fold.end("not run: the run was interrupted", interrupted=True)
            fold.end_waiting("not run: the run was interrupted")
            raise
        finally:
            if server is not None:
                server.close()
            for task in readers:
                task.cancel()
            shutil.rmtree(private, ignore_errors=True)

    def finish(self, why_not_run: str) -> None:
        """The entry is over: tests of bands that never ran are reported as not run (`why_not_run`)."""
        self.fold.end_waiting(why_not_run)
        if self.exit_code == 5 and not self.fold.collected and not self.broken:
            self.fold.notice("warning", f"pytest ({self.name}) collected no tests for this queue"
                             + (" (--only / --max-priority left none)" if self.options.only
                                or self.options.max_priority is not None else ""))

    @property
    def results(self) -> list[ProbeFinished]:
        return self.fold.results


async def _keep_tail(stream: asyncio.StreamReader, output: deque[str]) -> None:
    """Read pytest's output to its end, keeping its last lines (a line of any length, or none, cannot stop it)."""
    pending = b""
    while chunk := await stream.read(65536):
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()[-4096:]
        output.extend(line[-4096:].decode("utf-8", "replace").rstrip() for line in lines[-OUTPUT_LINES:])
    if pending:
        output.append(pending.decode("utf-8", "replace").rstrip())


async def _drain(readers: set[asyncio.Task[None]], limit: float = DRAIN_S) -> None:
    """Wait (bounded) for every channel to reach its end: the processes are gone, so their last lines are in."""
    pending = [t for t in readers if not t.done()]
    if pending:
        await asyncio.wait(pending, timeout=limit)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGINT to pytest (it stops between tests and tears down), then its whole process group is killed."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
        return
    except TimeoutError:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # its xdist workers too (start_new_session made it their leader)
    await proc.wait()
