"""Session recordings: every event to JSON Lines as it happens, and reading them back for replay.

The writer batches lines and hands them to the OS at least every 100 ms and at every stage boundary, close and
probe end (one `os.write` per batch, never one per frame), so a `kill -9` loses at most the last 100 ms. With
`offload=True` (the app and `stagewatch run`) a batch goes to a writer process (`probes.recwriter`) that formats the
frames and writes them on another core; it finishes what it was handed even if this process dies. Text frames are
kept as they come and formatted a block at a time (`encode_frames`: C-level passes over columns, orjson for the
strings), never one line of Python per frame. The file is created 0600. A write error (disk full, unwritable
path) stops recording with a Notice; the run goes on. The reader tolerates a truncated last line (a crash
mid-write).

With a cap (`max_bytes`, from `config.recording.max_file_mb`) a long watch rotates into part files next to the
first (`probes.rotation`), written by whoever writes the bytes (the writer process with offload); `read_recording`
reads a rotated recording whole, within a size budget. Pruning the default folder is `probes.retention`'s.
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
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import platformdirs

from .events import (AnyEvent, Closed, Event, Frame, Notice, ProbeFinished, RunFinished, RunStarted, StageFinished,
                     StageStarted, from_record, to_record)
from .redact import Redactor
from .rotation import PartWriter, part_path, recording_parts

RECORDING_VERSION = 2  # 2: a header line, typed stage evidence ({"kind": …}); 1: no header, evidence as a dict
FLUSH_INTERVAL = 0.1
FLUSH_BYTES = 1 << 20  # also hand a batch to the OS once this much is buffered (floods of large frames)
# What a buffered frame counts for besides its size (the Frame and its objects): a flood of small frames goes out
# in batches of about 2000, which stay in the CPU cache while they are turned into columns and marshalled (a 30k
# batch took 3x longer per frame) and fit the writer's pipe without blocking.
FRAME_COST = 512
PIPE_SIZE = 1 << 20  # the writer's pipe (Linux: the default unprivileged maximum; the default is 64 KB)
_BOUNDARIES = (StageStarted, StageFinished, Closed, ProbeFinished, RunFinished, Notice)
_json_str = json.encoder.encode_basestring  # C: a JSON string literal, non-ASCII kept
# In a batch, just before a RunStarted line when the recorder rotates: a round starts here (`PartWriter.boundary`).
# The empty line: it writes nothing wherever it is not looked for.
ROUND_MARK = ""
# A rotated recording read as one (`read_recording`): past this total, only the newest parts that fit are read.
READ_PARTS_MAX_BYTES = 256 * 2**20
_FRAME_LINE = ('{"type":"frame","t":%r,"wall_ts":%.6f,"probe_id":%s,"direction":"%s","ms":%r,"size":%d,'
               '"data":%s,"truncated":%s}\n')


def default_recordings_dir() -> Path:
    """The folder default recordings go to (the user data dir); the only one `prune_recordings` is meant for."""
    return Path(platformdirs.user_data_dir("stagewatch")) / "recordings"


def default_recording_path(target: str, now: float | None = None) -> Path:
    """`<YYYYmmdd-HHMMSS>-<target, [alnum _-] only, at most 40>.jsonl` in the default folder (the naming
    `probes.retention` recognises as ours)."""
    stamp = datetime.fromtimestamp(now or time.time()).strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in target)[:40] or "target"
    return default_recordings_dir() / f"{stamp}-{safe}.jsonl"


def header_line(wall0: float, part: int | None = None, round_record: dict[str, Any] | None = None) -> str:
    """A recording's first line. A part after the first also names its number and, when it starts in the middle
    of a round, that round's RunStarted record (read only when the part is read on its own)."""
    header: dict[str, Any] = {"type": "recording", "format": "stagewatch", "version": RECORDING_VERSION,
                              "wall0": wall0}
    if part is not None:
        header["part"] = part
    if round_record is not None:
        header["round"] = round_record
    return json.dumps(header, ensure_ascii=False, default=str) + "\n"


def end_line(wall0: float, t: float) -> str:
    """A recording's last line, written when the recorder closes it: a header-shaped record with `"end": true` (so
    a reader that predates it takes it for one more header and reads on), at the last event's `t`. A reader tailing
    the recording (`probes.follow`) stops there; a recording cut short (kill -9) has none."""
    return json.dumps({"type": "recording", "format": "stagewatch", "version": RECORDING_VERSION, "wall0": wall0,
                       "end": True, "t": t, "wall_ts": round(wall0 + t, 6)}) + "\n"


def is_end(record: dict[str, Any]) -> bool:
    """Whether a header-shaped record (`decode_line`) is the recording's last line (`end_line`)."""
    return record.get("end") is True


def part_header(wall0: float) -> Callable[[int, dict[str, Any] | None], bytes]:
    """The header maker `PartWriter` takes, for a recording that started at `wall0`."""
    return lambda part, round_record: encode_lines([header_line(wall0, part, round_record)])


def write_items(sink: PartWriter, items: list[Any], wall0: float, literals: dict[Any, bytes],
                ids: dict[str, str]) -> int:
    """Format a batch (`encode_items`) and write it through `sink`, telling it where rounds start (ROUND_MARK);
    returns the write calls it took. The recorder (inline) and its writer process both write this way."""
    if ROUND_MARK not in items:
        return sink.write(encode_items(items, wall0, literals, ids))
    writes = start = 0
    for k, item in enumerate(items):
        if type(item) is str and not item:
            if k > start:
                writes += sink.write(encode_items(items[start:k], wall0, literals, ids))
            start = k + 1
            following = items[start] if start < len(items) else None
            writes += sink.boundary(following if type(following) is str else None)
    if start < len(items):
        writes += sink.write(encode_items(items[start:], wall0, literals, ids))
    return writes


_dumps = orjson.dumps


def json_literal(text: str) -> bytes:
    """A string as a UTF-8 JSON string literal (orjson: non-ASCII kept, the same escapes as `json.dumps`). Text
    holding lone surrogates (not UTF-8) gets \\u escapes instead, as `json.dumps(ensure_ascii=True)` writes them."""
    try:
        return _dumps(text)
    except TypeError:  # orjson.JSONEncodeError: surrogates (or a str subclass it refuses)
        return json.dumps(text, ensure_ascii=True).encode("ascii")


class _Literals(dict[Any, bytes]):
    """str -> its JSON literal (probe ids, directions: a handful of values, each encoded once)."""

    def __missing__(self, key: Any) -> bytes:
        value = self[key] = json_literal(key if isinstance(key, str) else str(key))
        return value


def literal_cache() -> dict[Any, bytes]:
    """A cache of JSON literals for `encode_frames` / `encode_items` (one per writer)."""
    return _Literals()


class _Bools(dict[Any, bytes]):
    def __missing__(self, key: Any) -> bytes:
        return b"true" if key else b"false"


_TRUTH = _Bools({True: b"true", False: b"false"})
_CONSTANT = (str, bool)  # the types a packed block's probe_id, direction and truncated may be sent as, once


def _constant(col: tuple[Any, ...]) -> Any:
    """The one value of a column (a flood's probe id, direction, truncated flag), or the column itself."""
    first = col[0]
    return first if type(first) in _CONSTANT and col.count(first) == len(col) else col


def pack_frames(frames: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    """A block of text frames (Frames or tuples of their fields) as compact columns for the writer process: all
    builtin types for marshal, and about 40 % cheaper to make and marshal than the frames' fields. t, ms (floats,
    as the engine makes them) and size as machine arrays (bytes); probe_id, direction and truncated once when the
    whole block shares them; the data as a tuple of str. `encode_frames` takes it."""
    cols = tuple(zip(*frames))
    t, probe_id, direction, ms, size, data, truncated = cols
    try:
        return (array("d", t).tobytes(), _constant(probe_id), _constant(direction), array("d", ms).tobytes(),
                array("q", size).tobytes(), data, _constant(truncated))
    except (TypeError, OverflowError):  # a field of another type: plain columns
        return cols


def _columns(frames: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    return tuple(zip(*frames))


def _numbers(col: Any, code: str) -> Sequence[Any]:
    if type(col) is bytes:
        values = array(code)
        values.frombytes(col)
        return values.tolist()
    return col  # type: ignore[no-any-return]


def unpack_frames(block: Sequence[Any]) -> list[tuple[Any, ...]]:
    """The frames' fields, one tuple per frame, of a block (`pack_frames` or plain columns)."""
    t, probe_id, direction, ms, size, data, truncated = block
    n = len(data)
    cols = [_numbers(t, "d"), probe_id, direction, _numbers(ms, "d"), _numbers(size, "q"), data, truncated]
    return list(zip(*(c if type(c) in (tuple, list) else (c,) * n for c in cols)))


def _float_texts(col: Sequence[Any]) -> list[bytes]:
    """Each number as `repr()` writes it (the line format's JSON number), in C: orjson writes the shortest
    round-trip digits, as repr does; the two differ only in exponent style, below 1e-4 and from 1e16, so those
    values (rare: t and ms are not that small) are re-done with repr."""
    raw = _dumps(col)
    texts = raw[1:-1].split(b",")
    if min(col) >= 1e-4 and max(col) < 1e16 and b"n" not in raw:  # "null": nan/inf
        return texts
    return [t if type(x) is float and 1e-4 <= abs(x) < 1e16 else repr(x).encode("ascii") for x, t in zip(col, texts)]


def _field(template: list[bytes], args: list[Any], col: Any, literal: Callable[[Any], bytes]) -> None:
    """A field that is often the same for a whole block: written into the template once, else one arg a frame."""
    if type(col) is tuple or type(col) is list:
        col = _constant(tuple(col))
        if type(col) is tuple:
            template.append(b"%s")
            args.append(map(literal, col))
            return
    template.append(literal(col).replace(b"%", b"%%"))


def encode_frames(block: Sequence[Any], wall0: float, literals: dict[Any, bytes]) -> bytes:
    """JSON lines (UTF-8) of a block of text frames (`pack_frames`, or plain columns `tuple(zip(*frames))`), the
    same lines `frame_line` writes: a few C-level passes over the columns and one %-format for the whole block, no
    Python code per frame (about 0.7 µs a frame against 2.4 µs line by line). `literals`: the caller's cache."""
    t, probe_id, direction, ms, size, data, truncated = block
    t, ms, size = _numbers(t, "d"), _numbers(ms, "d"), _numbers(size, "q")
    try:
        datas: list[bytes] | map[bytes] = list(map(_dumps, data))
    except TypeError:  # lone surrogates somewhere: each string on its own
        datas = map(json_literal, data)
    template = [b'{"type":"frame","t":%s,"wall_ts":%.6f,"probe_id":']
    args: list[Any] = [_float_texts(t), map(wall0.__add__, t)]
    _field(template, args, probe_id, literals.__getitem__)
    template.append(b',"direction":')
    _field(template, args, direction, literals.__getitem__)
    template.append(b',"ms":%s,"size":%d,"data":%s,"truncated":')
    args += [_float_texts(ms), size, datas]
    _field(template, args, truncated, _TRUTH.__getitem__)
    template.append(b"}\n")
    n, width = len(data), len(args)
    flat: list[Any] = [None] * (n * width)  # the args frame by frame, filled a column at a time (in C)
    for k, col in enumerate(args):
        flat[k::width] = col
    return (b"".join(template) * n) % tuple(flat)


def encode_items(items: Sequence[Any], wall0: float, literals: dict[Any, bytes], ids: dict[str, str]) -> bytes:
    """UTF-8 JSON lines of a batch: finished lines (str) and blocks of text frames (see `pack_frames`), in order.
    A block that cannot be formatted in one piece (a field of an unexpected type) falls back to one `frame_line`
    per frame, and a frame that cannot be formatted at all to a warning notice in its place (as for any event)."""
    out: list[bytes] = []
    lines: list[str] = []
    for item in items:
        if type(item) is str:
            lines.append(item)
            continue
        if lines:
            out.append(encode_lines(lines))
            lines = []
        try:
            out.append(encode_frames(item, wall0, literals))
        except (TypeError, ValueError, OverflowError):
            out.append(encode_lines([_frame_line_or_notice(row, wall0, ids) for row in unpack_frames(item)]))
    if lines:
        out.append(encode_lines(lines))
    return out[0] if len(out) == 1 else b"".join(out)


def _frame_line_or_notice(e: tuple[Any, ...], wall0: float, ids: dict[str, str]) -> str:
    try:
        return frame_line(e, wall0, ids)
    except (TypeError, ValueError) as exc:  # an unserialisable field must not stop the recording
        return json.dumps({"type": "notice", "t": e[0] if isinstance(e[0], (int, float)) else 0.0,
                           "level": "warning", "message": f"frame event not recorded: {type(exc).__name__}"}) + "\n"


def frame_line(e: tuple[Any, ...], wall0: float, ids: dict[str, str]) -> str:
    """One frame's JSON line from its fields (a Frame or a plain tuple of them): the same line `encode_frames` writes
    for a block of frames, which is how the recorder writes them (this is the one-frame fallback)."""
    t, probe_id, direction, ms, size, data, truncated = e
    pid = ids.get(probe_id)
    if pid is None:
        pid = ids[probe_id] = _json_str(probe_id)
    # Frame data is redacted where it is made (ProbeRun._on_message / _step_send, with the run's secrets and the
    # JWT shape): scanning it again here would do that work twice for every frame of a flood.
    return _FRAME_LINE % (t, wall0 + t, pid, direction, ms, size, _json_str(data), "true" if truncated else "false")


class _WriterProcess:
    """The `probes.recwriter` child: the parent ships marshalled batches through a pipe (frames as packed columns,
    no formatting); the child formats them and writes to the recording (the same open file, passed down) and, with
    a cap, rotates it into parts itself (announced on its stdout as `part N` lines, read here without waiting). Own
    session: a terminal's Ctrl-C is not its."""

    def __init__(self, fd: int, wall0: float, path: Path, max_bytes: int | None) -> None:
        args = [sys.executable, "-m", "probes.recwriter", str(fd), repr(wall0)]
        if max_bytes is not None:
            args += [str(max_bytes), os.path.abspath(path)]
        self.parts: list[int] = []  # the part numbers the child has opened (as far as it has said)
        self._said = b""  # an unfinished line of what the child says
        self._problems: list[str] = []
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     pass_fds=(fd,), start_new_session=True, close_fds=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.pipe = self.proc.stdin.fileno()
        try:  # room for several batches: the engine does not wait for the child to read each one
            import fcntl  # noqa: PLC0415 (POSIX only)

            fcntl.fcntl(self.pipe, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except (ImportError, AttributeError, OSError):
            pass  # not Linux, or a lower limit: the default pipe works, with more waits
        os.set_blocking(self.proc.stdout.fileno(), False)

    def send(self, items: list[Any]) -> int:
        """One batch (see `encode_items`); returns the write calls it took. Raises OSError (BrokenPipeError) if the
        child is gone. Marshal version 2: no back-references, whose hash-table entry for every string the engine
        still holds elsewhere (a flood's data) costs more than they save once `pack_frames` has shared the rest."""
        payload = marshal.dumps(items, 2)
        data = memoryview(len(payload).to_bytes(8, "little") + payload)
        writes = 0
        while data:
            data = data[os.write(self.pipe, data):]
            writes += 1
        return writes

    def problem(self) -> str | None:
        """What the child said went wrong, if it said anything (never blocks); notes the parts it announced."""
        assert self.proc.stdout is not None
        try:
            said = self.proc.stdout.read()
        except (BlockingIOError, ValueError):
            said = None
        if said:
            *lines, self._said = (self._said + said).split(b"\n")
            for line in lines:
                self._heard(line.decode("utf-8", "replace").strip())
        return "\n".join(self._problems) or None

    def _heard(self, line: str) -> None:
        word, _, number = line.partition(" ")
        if word == "part" and number.isdigit():
            self.parts.append(int(number))
        elif line:
            self._problems.append(line)

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
        if self._said:  # its last words, without a line end
            self._heard(self._said.decode("utf-8", "replace").strip())
            self._said = b""
            said = "\n".join(self._problems) or None
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

    Lines are appended to `path` (created 0600 if new; an existing regular file is made 0600). With `max_bytes`
    the recording rotates into parts next to it (`probes.rotation`: at the next round once over the cap, at the
    latest before twice the cap); `path` stays the first file and `parts` lists them all. The rotation is done by
    whoever writes (the writer process with offload): `handle` pays nothing for it but a mark before RunStarted.
    """

    def __init__(self, path: Path, redactor: Redactor | None = None, wall0: float | None = None,
                 notify: Callable[[Notice], None] | None = None, offload: bool = False,
                 max_bytes: int | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.redactor = redactor or Redactor()
        self.wall0 = time.time() if wall0 is None else wall0
        self.notify = notify
        self.error: str | None = None
        self.lines_written = 0
        self.writes = 0  # os.write calls, for the "no syscall per frame" check
        self._buf: list[Any] = []  # text frames' fields (formatted at flush, in blocks) and finished lines (str)
        self._line_at: list[int] = []  # where in _buf the finished lines are
        self._ids: dict[str, str] = {}  # probe id -> its JSON string literal (frame_line)
        self._literals = literal_cache()  # probe ids and directions -> JSON literals (encode_frames)
        self._buffered = 0
        self._last_t = 0.0
        self._last_flush = time.monotonic()
        self._marks = 0  # ROUND_MARKs in _buf (not lines)
        self._fd: int | None = None
        self._sink: PartWriter | None = None  # inline: writes (and rotates) the recording's files
        self._part_numbers: list[int] = []  # the parts after the first, once the writer has gone
        self._timer: asyncio.Task[None] | None = None
        self._writer: _WriterProcess | None = None  # offload: formatting and writing in a child process
        self._open()
        if self._fd is not None:
            self._sink = PartWriter(self._fd, self.path, max_bytes, part_header(self.wall0))
        if offload and self._fd is not None:
            try:
                self._writer = _WriterProcess(self._fd, self.wall0, self.path, max_bytes)
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
            return
        # the header line: first in the file, written with the first batch
        header = header_line(self.wall0)
        self._line_at.append(len(self._buf))
        self._buf.append(header)
        self._buffered += len(header)

    def _fail(self, message: str) -> None:
        self.error = message
        self._buf.clear()
        self._line_at.clear()
        self._buffered = self._marks = 0
        if self._writer is not None:
            self._writer.proc.kill()
            self._writer.close(1.0)
            self._retire_writer(self._writer)
        self._close_sink()
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

    @property
    def parts(self) -> list[Path]:
        """The recording's files so far: `path`, then the parts it rotated into (as far as the writer process has
        said, with offload; all of them after `close`)."""
        if self._writer is not None:
            self._writer.problem()  # reads what it announced, without waiting
            numbers = self._writer.parts
        elif self._sink is not None:
            numbers = self._sink.parts
        else:
            numbers = self._part_numbers
        return [self.path] + [part_path(self.path, n) for n in numbers]

    def _retire_writer(self, writer: _WriterProcess) -> None:
        self._part_numbers = list(writer.parts)
        self._writer = None

    def _close_sink(self) -> None:
        if self._sink is not None:  # (with offload it wrote nothing: the writer's parts stay)
            self._part_numbers = list(self._sink.parts) or self._part_numbers
            self._sink.close()
            self._sink = None

    def _line(self, event: AnyEvent) -> str:
        if type(event) is Frame and type(event.data) is str:
            return frame_line(event, self.wall0, self._ids)
        record = self.redactor.tree(to_record(event))
        record["wall_ts"] = round(self.wall0 + event.t, 6)
        return json.dumps(record, ensure_ascii=False, default=str) + "\n"

    def handle(self, event: AnyEvent) -> None:
        if type(event) is Frame and type(event[5]) is str:
            # The flood path: keep the frame; it is formatted at flush, with the frames around it, in one block
            # (in the writer process with offload). With the timer running (start()), time-based flushes are its
            # job: no clock read per frame.
            if self._fd is None:
                return
            # A plain tuple of the fields (event[:]), not the Frame: made of str/float/int/bool, it is untracked by the
            # garbage collector at its first pass (a NamedTuple never is), so buffered frames do not pile up in the
            # old generation and trigger full collections (with default GC thresholds, as in `stagewatch run`).
            self._buf.append(event[:])
            self._buffered += event[4] + FRAME_COST
            if self._buffered >= FLUSH_BYTES or (
                    self._timer is None and time.monotonic() - self._last_flush >= FLUSH_INTERVAL):
                self.flush()
            return
        if self._fd is None:
            return
        self._last_t = event.t
        try:
            line = self._line(event)
        except (TypeError, ValueError, RecursionError) as exc:  # an unserialisable value must not stop the run
            line = json.dumps({"type": "notice", "t": event.t, "level": "warning",
                               "message": f"{event.kind} event not recorded: {type(exc).__name__}"}) + "\n"
        if type(event) is RunStarted and self.max_bytes is not None:  # a round starts: a part may start here
            self._line_at.append(len(self._buf))
            self._buf.append(ROUND_MARK)
            self._marks += 1
        self._line_at.append(len(self._buf))
        self._buf.append(line)
        self._buffered += len(line)
        if (isinstance(event, _BOUNDARIES) or self._buffered >= FLUSH_BYTES
                or time.monotonic() - self._last_flush >= FLUSH_INTERVAL):
            self.flush()

    def _items(self) -> list[Any]:
        """The buffer as a batch (and empties it): finished lines as they are, each run of text frames between them
        as one block of columns (`encode_frames`): packed for marshal (`pack_frames`) when a writer process formats
        them, else plain (`zip(*frames)`, in C)."""
        buf, at = self._buf, self._line_at
        block = pack_frames if self._writer is not None else _columns
        if buf and type(buf[-1]) is not str:
            self._last_t = buf[-1][0]
        if not at:
            items: list[Any] = [block(buf)]
        else:
            items = []
            start = 0
            for pos in at:
                if pos > start:
                    items.append(block(buf[start:pos]))
                items.append(buf[pos])
                start = pos + 1
            if start < len(buf):
                items.append(block(buf[start:]))
            at.clear()
        self._buf = []
        self._buffered = 0
        return items

    def flush(self, *, end: bool = False) -> None:
        """Hand everything buffered to the OS in one write (a kill -9 after this loses none of it). With `end`
        (`close`), the recording's last line (`end_line`) goes with it."""
        self._last_flush = time.monotonic()
        if self._fd is None or not (self._buf or end):
            return
        count = len(self._buf) - self._marks
        self._marks = 0
        items = self._items() if self._buf else []
        if end:
            items.append(end_line(self.wall0, self._last_t))  # not an event line: not in lines_written
        if self._writer is not None:
            self._ship(items, count)
            return
        assert self._sink is not None
        try:
            self.writes += write_items(self._sink, items, self.wall0, self._literals, self._ids)
            self.lines_written += count
        except OSError as exc:
            self._fail(f"cannot write recording {self.path}: {exc.strerror or exc}")

    def _ship(self, items: list[Any], count: int) -> None:
        """Offload: the batch to the writer process, which formats and writes it."""
        assert self._writer is not None
        problem = self._writer.problem()
        if problem is None:
            try:
                self.writes += self._writer.send(items)
                self.lines_written += count
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
        self.flush(end=True)
        if self._writer is not None:  # wait until the child has written everything it was given
            writer = self._writer
            problem = writer.close()
            self._retire_writer(writer)
            if problem is not None and self._fd is not None:
                self._fail(f"cannot write recording {self.path}: {problem}")
        self._close_sink()
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None


@dataclass
class Replay:
    events: list[Event] = field(default_factory=list)
    version: int = 1  # the format version its header line names (1: a recording from before the header)
    skipped: int = 0  # malformed lines in the middle
    truncated: bool = False  # the last line was cut short (the recorder died mid-write)
    parts: list[Path] = field(default_factory=list)  # the files read, in order (a rotated recording: several)
    left_out: list[Path] = field(default_factory=list)  # parts not read: over the size budget, unreadable, foreign

    @property
    def wall0(self) -> float | None:
        from .events import RunStarted

        first = next((e for e in self.events if isinstance(e, RunStarted)), None)
        return first.wall if first else None


class RecordingError(Exception):
    """The recording cannot be read at all (missing, not a recording)."""


def read_recording(path: str | Path, follow_parts: bool = True, max_bytes: int = READ_PARTS_MAX_BYTES) -> Replay:
    """Read a recording for replay. With `follow_parts` (the default) a rotated recording is read whole: `path`
    (its first file) and then its parts (`recording_parts`), in order, each part checked to start with a
    stagewatch header (a part that does not, or cannot be read, is left out and named in `left_out`).

    Bounded: a recording in one file is read whole, as it always was (a single file is bounded by the recorder's
    own cap when it rotates). Parts together are read up to `max_bytes` (256 MiB by default: ten parts at the
    default 25 MB cap): past that, the newest parts that fit are read — the end of a long watch, the part that
    matters — and at least the newest one; the older ones are named in `left_out`. A part read first on its own
    (a part file given as `path`, or the oldest part that fit) that starts in the middle of a round gets that
    round's RunStarted from its header, so its wall times are right; in a chain it is not repeated."""
    from .steps import kinds  # registers the step kinds, so evidence records come back typed (not imported at
    kinds()  # module level: the writer process imports this module and must start fast)
    p = Path(path)
    files = recording_parts(p) if follow_parts else [p]
    chosen, replay = _within_budget(files, max_bytes), Replay()
    replay.left_out = [f for f in files if f not in chosen]
    anything = False
    for f in chosen:
        try:
            raw = f.read_bytes()
        except OSError as exc:
            if f == p:
                raise RecordingError(f"{p}: cannot read recording: {exc.strerror or exc}") from None
            replay.left_out.append(f)
            continue
        if f != p and not _starts_with_header(raw):
            replay.left_out.append(f)
            continue
        anything = anything or bool(raw.strip())
        _read_lines(raw, replay)
        replay.parts.append(f)
    if not replay.events and (replay.skipped or replay.truncated or anything):
        raise RecordingError(f"{p}: not a stagewatch recording (no event could be read)")
    return replay


def _within_budget(files: list[Path], max_bytes: int) -> list[Path]:
    """All of `files` if they fit in `max_bytes` together (or there is one), else the newest that fit (at least
    the last)."""
    if len(files) == 1:
        return files
    chosen: list[Path] = []
    total = 0
    for f in reversed(files):
        try:
            size = f.stat().st_size
        except OSError:
            size = 0  # read below, which says why it cannot be
        if chosen and total + size > max_bytes:
            break
        chosen.append(f)
        total += size
    return chosen[::-1]


def _starts_with_header(raw: bytes) -> bool:
    try:
        head = json.loads(raw.split(b"\n", 1)[0].decode("utf-8", "surrogatepass"))
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(head, dict) and head.get("type") == "recording" and head.get("format") == "stagewatch"


def decode_line(line: bytes) -> Any:
    """One line of a recording (without its line end): the event it holds, the record itself (a dict) for a
    header-shaped line (`"type": "recording"`: the header, or `end_line`), None for a blank line. Raises ValueError
    (UnicodeDecodeError is one) for anything else. Replay and `probes.follow` read lines with this. Evidence comes
    back typed once the step kinds are registered (`probes.steps.kinds()`)."""
    if not line.strip():
        return None
    record = json.loads(line.decode("utf-8", "surrogatepass"))
    if not isinstance(record, dict):
        raise ValueError("not an object")
    record.pop("wall_ts", None)
    if record.get("type") == "recording":
        return record
    return from_record(record)


def _read_lines(raw: bytes, replay: Replay) -> None:
    """Add the events of one file's bytes to `replay` (a truncated last line noted, other bad lines counted)."""
    lines = raw.split(b"\n")
    last = len(lines) - 1
    for number, line in enumerate(lines):
        try:
            item = decode_line(line)
        except ValueError:
            if number == last:
                replay.truncated = True
            else:
                replay.skipped += 1
            continue
        if item is None:
            continue
        if type(item) is dict:  # the header line (or the end line, which says nothing replay needs)
            if not is_end(item):
                _read_header(item, replay)
            continue
        replay.events.append(item)


def _read_header(record: dict[str, Any], replay: Replay) -> None:
    version = record.get("version")
    replay.version = version if isinstance(version, int) else 0
    context = record.get("round")
    if isinstance(context, dict) and not replay.events:  # a part read first that starts mid-round
        try:
            replay.events.append(from_record(context))
        except (ValueError, TypeError, KeyError):
            pass
