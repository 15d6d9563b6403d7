"""`run_pytest`: the team's own pytest suite as the priority queue. The engine's entry for it, beside `run_queue`,
with the same signature plus the pytest arguments and the same events (RunStarted … RunFinished), so every front
end (headless, the app, the recorder, the reports) shows a test as it shows a probe.

It starts the embedded sandbox for a sandbox target (honouring the run's fault), opens a Unix socket in a private
0700 directory, and runs `sys.executable -m pytest -p probes.pytest_plugin [-x] ARGS` with, in its environment:

- `STAGEWATCH_BASE_URL`, `STAGEWATCH_WS_URL`, `STAGEWATCH_TARGET`, and for the sandbox its signing key in the
  variable the config names (`auth.secret_env`, default `JWT_SECRET_KEY`): what the suite's conftest reads;
- `STAGEWATCH_PYTEST_SOCKET` and `STAGEWATCH_PYTEST_OPTIONS` (JSON: the config's `pytest` section, the run's
  `max_priority` and `only` — probe ids, so a front end reruns one test as it reruns one probe): what the plugin
  reads.

The plugin's messages (one JSON line each, from pytest and from every xdist worker) are folded into events by
`probes/pytest_fold.py`. pytest's own output is kept (the last lines) and shown as a notice when pytest stops for
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
from .config import CREDENTIAL_HEADERS, Config, ResolvedTarget
from .context import ws_url_for
from .events import RunFinished
from .pytest_fold import SuiteFold
from .pytest_items import OPTIONS_ENV, SOCKET_ENV
from .redact import Redactor
from .runner import RunOptions, RunResult, sandbox_options
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


def plugin_options(config: Config, target: ResolvedTarget, options: RunOptions) -> dict[str, object]:
    s = config.pytest
    return {"markers": dict(s.markers), "patterns": dict(s.patterns), "default_priority": s.default_priority,
            "max_priority": options.max_priority, "only": list(options.only), "max_frames": s.max_frames,
            "frame_bytes": s.frame_bytes, "longrepr_chars": s.longrepr_chars, "secret_env": target.auth.secret_env}


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
    env = dict(os.environ if options.env is None else options.env)
    for name in OUR_PYTEST_VARS:  # they describe a pytest around us (our own tests, a worker), not the suite's
        env.pop(name, None)
    redactor = Redactor([secret] if secret else [])
    redactor.add(env.get(target.auth.secret_env))
    redactor.add(env.get(target.auth.token_env))
    for name, value in target.protocol.headers.items():
        if name.lower() in CREDENTIAL_HEADERS:
            redactor.add(value)
            redactor.add(value.partition(" ")[2])
    fold = SuiteFold(bus, clock, target, base_url, redactor, default_priority=config.pytest.default_priority)
    started = time.monotonic()
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
    exit_code: int | None = None
    try:
        socket_path = str(private / "events.sock")
        server = await asyncio.start_unix_server(serve, path=socket_path, limit=MAX_LINE)
        env.update({SOCKET_ENV: socket_path, OPTIONS_ENV: json.dumps(plugin_options(config, target, options)),
                    "STAGEWATCH_BASE_URL": base_url, "STAGEWATCH_WS_URL": ws_url_for(target, base_url),
                    "STAGEWATCH_TARGET": target.name})
        if secret:
            env[target.auth.secret_env] = secret
        proc = await asyncio.create_subprocess_exec(
            *pytest_command(args, options.fail_fast), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True)
        assert proc.stdout is not None
        await _keep_tail(proc.stdout, output)
        code = await proc.wait()
        await _drain(readers)
        exit_code = fold.exitstatus if fold.exitstatus is not None else code
        if exit_code not in (0, 1):
            tail = "\n".join(line for line in output if line.strip())
            fold.begin()
            fold.notice("error" if exit_code in (3, 4) else "warning",
                        f"pytest exited {exit_code} ({EXIT_WORDS.get(exit_code, 'see its output')})"
                        + (f"; its last lines:\n{tail}" if tail else ""))
        fold.end("not run: --fail-fast" if options.fail_fast and fold.failed
                 else f"not run: pytest ended (exit code {exit_code})")
    except asyncio.CancelledError:
        if proc is not None:
            await _stop(proc)
        await _drain(readers, 1.0)
        fold.end("not run: the run was interrupted", interrupted=True)
        bus.publish(RunFinished(clock(), "interrupted", round((time.monotonic() - started) * 1000, 1)))
        raise
    finally:
        if server is not None:
            server.close()
        for task in readers:
            task.cancel()
        shutil.rmtree(private, ignore_errors=True)
    verdict = "fail" if fold.failed or exit_code != 0 else "pass"
    bus.publish(RunFinished(clock(), verdict, round((time.monotonic() - started) * 1000, 1)))  # type: ignore[arg-type]
    return PytestResult(verdict, fold.results, base_url, exit_code)


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
