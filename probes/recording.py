"""Session recordings: every event to JSON Lines as it happens, and reading them back for replay.

The writer batches lines and hands them to the OS at least every 100 ms and at every stage boundary, close and
probe end (one `os.write` per batch, never one per frame), so a `kill -9` loses at most the last 100 ms. With
`offload=True` (the app and `stagewatch run`) a batch goes to a writer process (`probes.recwriter`) that formats the
frames and writes them on another core; it finishes what it was handed even if this process dies. The
file is created 0600. A write error (disk full, unwritable path) stops recording with a Notice; the run goes on.
The reader tolerates a truncated last line (a crash mid-write).
"""

from __future__ import annotations

import asyncio
import json
import marshal
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import platformdirs

from .events import (AnyEvent, Closed, Event, Frame, Notice, ProbeFinished, RunFinished, StageFinished,
                     StageStarted, from_record, to_record)
from .redact import Redactor

FLUSH_INTERVAL = 0.1
FLUSH_BYTES = 1 << 20  # also hand a batch to the OS once this much is buffered (floods of large frames)
_BOUNDARIES = (StageStarted, StageFinished, Closed, ProbeFinished, RunFinished, Notice)
_json_str = json.encoder.encode_basestring  # type: ignore[attr-defined]  # C: a JSON string literal, non-ASCII kept
_FRAME_LINE = ('{"type":"frame","t":%r,"wall_ts":%.6f,"probe_id":%s,"direction":"%s","ms":%r,"size":%d,'
               '"data":%s,"truncated":%s}\n')


def default_recording_path(target: str, now: float | None = None) -> Path:
    stamp = datetime.fromtimestamp(now or time.time()).strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in target)[:40] or "target"
    return Path(platformdirs.user_data_dir("stagewatch")) / "recordings" / f"{stamp}-{safe}.jsonl"


def frame_line(e: tuple[Any, ...], wall0: float, ids: dict[str, str]) -> str:
    """One frame's JSON line from its fields (a Frame or a plain tuple of them): the hot path of a flood, one
    %-format and C-level string escaping, no json.dumps per frame."""
    t, probe_id, direction, ms, size, data, truncated = e
    pid = ids.get(probe_id)
    if pid is None:
        pid = ids[probe_id] = _json_str(probe_id)
    # Frame data is redacted where it is made (ProbeRun._on_message / _step_send, with the run's secrets and the
    # JWT shape): scanning it again here would do that work twice for every frame of a flood.
    return _FRAME_LINE % (t, wall0 + t, pid, direction, ms, size, _json_str(data), "true" if truncated else "false")


class _WriterProcess:
    """The `probes.recwriter` child: the parent ships marshalled batches through a pipe; the child formats them
    and writes to the recording (the same open file, passed down). Own session: a terminal's Ctrl-C is not its."""

    def __init__(self, fd: int, wall0: float) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "probes.recwriter", str(fd), repr(wall0)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     pass_fds=(fd,), start_new_session=True, close_fds=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.pipe = self.proc.stdin.fileno()
        os.set_blocking(self.proc.stdout.fileno(), False)

    def send(self, items: list[Any]) -> int:
        """One batch; returns the write calls it took. Raises OSError (BrokenPipeError) if the child is gone."""
        payload = marshal.dumps(items)
        data = memoryview(len(payload).to_bytes(8, "little") + payload)
        writes = 0
        while data:
            data = data[os.write(self.pipe, data):]
            writes += 1
        return writes

    def problem(self) -> str | None:
        """What the child said went wrong, if it said anything (never blocks)."""
        assert self.proc.stdout is not None
        try:
            said = self.proc.stdout.read()
        except (BlockingIOError, ValueError):
            return None
        return said.decode("utf-8", "replace").strip() or None if said else None

    def close(self, timeout: float = 10.0) -> str | None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return "the recording writer did not finish"
        said = self.problem()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return said or (f"the recording writer failed (exit {code})" if code else None)


def encode_lines(lines: list[str]) -> bytes:
    """UTF-8 bytes of JSON lines; a line holding lone surrogates is re-serialised with \\u escapes."""
    text = "".join(lines)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return b"".join(_safe_line(line) for line in lines)


def _safe_line(line: str) -> bytes:
    try:
        return line.encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(json.loads(line), ensure_ascii=True) + "\n").encode("ascii")


class Recorder:
    """Subscribe `recorder.handle` to the bus; `await recorder.start()` for the 100 ms timer; `close()` at end.

    Lines are appended to `path` (created 0600 if new; an existing regular file is made 0600).
    """

    def __init__(self, path: Path, redactor: Redactor | None = None, wall0: float | None = None,
                 notify: Callable[[Notice], None] | None = None, offload: bool = False) -> None:
        self.path = path
        self.redactor = redactor or Redactor()
        self.wall0 = time.time() if wall0 is None else wall0
        self.notify = notify
        self.error: str | None = None
        self.lines_written = 0
        self.writes = 0  # os.write calls, for the "no syscall per frame" check
        self._buf: list[str] = []
        self._ids: dict[str, str] = {}  # probe id -> its JSON string literal
        self._buffered = 0
        self._last_t = 0.0
        self._last_flush = time.monotonic()
        self._fd: int | None = None
        self._timer: asyncio.Task[None] | None = None
        self._writer: _WriterProcess | None = None  # offload: formatting and writing in a child process
        self._open()
        if offload and self._fd is not None:
            try:
                self._writer = _WriterProcess(self._fd, self.wall0)
            except OSError:
                self._writer = None  # no child to be had: format and write here, as without offload

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self._fail(f"cannot record to {self.path}: {exc.strerror or exc}")
            return
        self._fd = fd
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):  # never chmod a device such as /dev/full
                os.fchmod(fd, 0o600)
        except OSError as exc:
            self._fail(f"cannot record to {self.path}: {exc.strerror or exc}")

    def _fail(self, message: str) -> None:
        self.error = message
        self._buf.clear()
        self._buffered = 0
        if self._writer is not None:
            self._writer.proc.kill()
            self._writer.close(1.0)
            self._writer = None
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        if self.notify is not None:
            self.notify(Notice(self._last_t, "warning", message + " — recording stopped, the run goes on"))

    @property
    def active(self) -> bool:
        return self._fd is not None

    def _line(self, event: AnyEvent) -> str:
        if type(event) is Frame and type(event.data) is str:
            return frame_line(event, self.wall0, self._ids)
        record = self.redactor.tree(to_record(event))
        record["wall_ts"] = round(self.wall0 + event.t, 6)
        return json.dumps(record, ensure_ascii=False, default=str) + "\n"

    def handle(self, event: AnyEvent) -> None:
        if self._fd is None:
            return
        frame = type(event) is Frame
        if frame and self._writer is not None and type(event.data) is str:
            # The flood path with a writer process: keep the frame; it is formatted there. With the timer running
            # (start()), time-based flushes are its job: no clock read per frame.
            self._buf.append(event)
            self._buffered += event.size  # type: ignore[union-attr]
            if self._buffered >= FLUSH_BYTES or (
                    self._timer is None and time.monotonic() - self._last_flush >= FLUSH_INTERVAL):
                self.flush()
            return
        self._last_t = event.t
        try:
            line = self._line(event)
        except (TypeError, ValueError, RecursionError) as exc:  # an unserialisable value must not stop the run
            line = json.dumps({"type": "notice", "t": event.t, "level": "warning",
                               "message": f"{event.kind} event not recorded: {type(exc).__name__}"}) + "\n"
        self._buf.append(line)
        self._buffered += len(line)
        if ((not frame and isinstance(event, _BOUNDARIES)) or self._buffered >= FLUSH_BYTES
                or time.monotonic() - self._last_flush >= FLUSH_INTERVAL):
            self.flush()

    def flush(self) -> None:
        """Hand everything buffered to the OS in one write (a kill -9 after this loses none of it)."""
        self._last_flush = time.monotonic()
        if self._fd is None or not self._buf:
            return
        if self._writer is not None:
            self._ship()
            return
        data = encode_lines(self._buf)
        count = len(self._buf)
        self._buf.clear()
        self._buffered = 0
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                self.writes += 1
                view = view[written:]
            self.lines_written += count
        except OSError as exc:
            self._fail(f"cannot write recording {self.path}: {exc.strerror or exc}")

    def _ship(self) -> None:
        """Offload: the batch to the writer process (frames as plain tuples: marshal takes only builtin types)."""
        assert self._writer is not None
        items = [tuple(e) if type(e) is Frame else e for e in self._buf]
        self._buf.clear()
        self._buffered = 0
        problem = self._writer.problem()
        if problem is None:
            try:
                self.writes += self._writer.send(items)
                self.lines_written += len(items)
                return
            except OSError as exc:
                problem = self._writer.close(1.0) or f"the recording writer ended ({exc.strerror or exc})"
        self._fail(f"cannot write recording {self.path}: {problem}")

    async def start(self) -> None:
        """Flush every 100 ms while events trickle in between boundaries."""
        if self._timer is None and self._fd is not None:
            self._timer = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        while self._fd is not None:
            await asyncio.sleep(FLUSH_INTERVAL)
            if self._buf:
                self.flush()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        if self._writer is not None:  # wait until the child has written everything it was given
            writer, self._writer = self._writer, None
            problem = writer.close()
            if problem is not None and self._fd is not None:
                self._fail(f"cannot write recording {self.path}: {problem}")
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None


@dataclass
class Replay:
    events: list[Event] = field(default_factory=list)
    skipped: int = 0  # malformed lines in the middle
    truncated: bool = False  # the last line was cut short (the recorder died mid-write)

    @property
    def wall0(self) -> float | None:
        from .events import RunStarted

        first = next((e for e in self.events if isinstance(e, RunStarted)), None)
        return first.wall if first else None


class RecordingError(Exception):
    """The recording cannot be read at all (missing, not a recording)."""


def read_recording(path: str | Path) -> Replay:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise RecordingError(f"{p}: cannot read recording: {exc.strerror or exc}") from None
    replay = Replay()
    lines = raw.split(b"\n")
    last = len(lines) - 1
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8", "surrogatepass"))
            if not isinstance(record, dict):
                raise ValueError("not an object")
            record.pop("wall_ts", None)
            replay.events.append(from_record(record))
        except (ValueError, UnicodeDecodeError):
            if number == last:
                replay.truncated = True
            else:
                replay.skipped += 1
    if not replay.events and (replay.skipped or replay.truncated or raw.strip()):
        raise RecordingError(f"{p}: not a stagewatch recording (no event could be read)")
    return replay
