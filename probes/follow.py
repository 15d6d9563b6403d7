"""Following a recording while another stagewatch writes it: its events as they are appended, from the start.

`stagewatch follow` opens a session that someone else is recording right now — a partner on another ssh session
sees the same run live, and one who joins late first catches up from the start. This is its engine side (no
Textual): `Tail` reads what a recording holds so far, a block at a time, and `follow` / `follow_batches` poll it.

- Lines are decoded as replay decodes them (`recording.decode_line`); a line still being written (no line end
  yet) waits for the rest, and a bad line in the middle is counted and skipped, as on replay.
- A rotated recording (`probes.rotation`) is followed into its next part once that part exists and starts with
  this recording's header (the same `wall0`); the part before it is read to its end first (the writer never writes
  to a part again once it has opened the next). A file merely named like the next part (left by another
  session: the writer skips taken names) is passed over. Catching up on a long rotated recording starts where
  replay would (`recording.READ_PARTS_MAX_BYTES`: the newest parts that fit), with the round it starts in.
- It ends at the recording's last line (`recording.end_line`, written when the recorder closes it) — unless more
  follows it (a later session appended to the same path) — or, with `idle`, once the file it is on has not
  changed for that long (a recorder killed without closing it writes no last line).

Events carry redacted values only (the recorder redacted them), but raw outside text: whoever shows them to a
person sanitises them (`probes.sanitize`), as for a replay. Nothing here holds a token.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

from .events import AnyEvent, from_record
from .recording import (READ_PARTS_MAX_BYTES, RECORDING_VERSION, _within_budget, decode_line,
                        default_recordings_dir, is_end)
from .retention import newest_recordings
from .rotation import part_path, recording_parts

POLL_S = 0.1  # how often an idle tail looks for more (the recorder hands lines to the OS every 100 ms)
EMPTY_WAIT_S = 10.0  # an empty file that stays empty this long is refused (a recorder writes its header at once)
IDLE_S = 1800.0  # the default idle deadline: a recording unchanged this long is taken as abandoned
BLOCK = 256 * 1024  # bytes read (and decoded) at a time: a catch-up comes in batches a UI folds between redraws
MAX_LINE = 64 * 2**20  # a "line" longer than this without a line end is not one of ours: skipped
HEAD_MAX = 4 * 2**20  # how far into a part its header line is looked for
TAIL_PEEK = 8192  # the bytes read from the end of a file to see whether its last line ends the recording
LIVE_WITHIN_S = 3600.0  # latest_recording: a recording without its last line, changed within this, is live

Ended = Literal["end", "idle"]
_PART = re.compile(r"(?P<stem>.+)\.part(?P<n>[1-9][0-9]{0,8})\Z")


class FollowError(Exception):
    """The recording cannot be followed at all (missing, unreadable, not a file, not a stagewatch recording)."""


def _head(path: Path) -> dict[str, Any] | None | Literal[False]:
    """A part's header record; None while its first line is not complete yet; False if it is not a stagewatch
    recording's header (or cannot be read)."""
    try:
        with open(path, "rb", buffering=0) as f:
            data = b""
            while b"\n" not in data and len(data) < HEAD_MAX:
                more = f.read(65536)
                if not more:
                    break
                data += more
    except OSError:
        return False
    line, newline, _ = data.partition(b"\n")
    if not newline:
        return None if len(data) < HEAD_MAX else False
    try:
        record = decode_line(line)
    except ValueError:
        return False
    if type(record) is dict and record.get("format") == "stagewatch" and not is_end(record):
        return record
    return False


def _split_part(path: Path) -> tuple[Path, int]:
    """(the first file, the part number) of a path: a part file `<stem>.partN<suffix>` (N >= 2) is part N of
    `<stem><suffix>`; anything else is a first file."""
    match = _PART.match(path.stem)
    if match is not None and int(match["n"]) >= 2:
        first = path.with_name(match["stem"] + path.suffix)
        if part_path(first, int(match["n"])) == path:
            return first, int(match["n"])
    return path, 1


def _part_number(first: Path, path: Path) -> int:
    return 1 if path == first else _split_part(path)[1]


def _open(path: Path) -> Any:
    try:
        f = open(path, "rb", buffering=0)  # unbuffered: every read asks the OS, so appended bytes are seen
    except FileNotFoundError:
        raise FollowError(f"{path}: no such recording") from None
    except IsADirectoryError:
        raise FollowError(f"{path}: is a folder, not a recording") from None
    except OSError as exc:
        raise FollowError(f"{path}: cannot read recording: {exc.strerror or exc}") from None
    try:
        regular = stat.S_ISREG(os.fstat(f.fileno()).st_mode)
    except OSError:
        regular = False
    if not regular:  # a pipe or a device never ends and is nobody's recording
        f.close()
        raise FollowError(f"{path}: not a regular file")
    return f


class Tail:
    """A recording read as far as it has been written: `read()` returns the events of the complete lines that
    arrived since the last call (at most about `block` bytes' worth: call again for more), following the
    recording into its next part. No waiting here: `follow_batches` polls it.

    `live`: it has reached the end of what was written (the catch-up is over). `ended`: "end" at the recording's
    last line, "idle" once `stop("idle")` was called; no events follow either. Opening checks the file exists and
    is readable and, when its first line is there, that it is a stagewatch recording (`FollowError`)."""

    def __init__(self, path: str | Path, *, max_catchup_bytes: int = READ_PARTS_MAX_BYTES,
                 block: int = BLOCK) -> None:
        from .steps import kinds  # registers the step kinds: evidence comes back typed, as on replay

        kinds()
        self.path = Path(path)
        self.first, number = _split_part(self.path)
        self.block = max(block, 1)
        self.left_out: list[Path] = []  # parts before the one the catch-up started with (over the budget)
        if number == 1:
            files = recording_parts(self.first)
            if len(files) > 1:
                start = next((f for f in _within_budget(files, max_catchup_bytes) if f == self.first or _head(f)),
                             self.first)
                self.left_out = files[:files.index(start)]
                number = _part_number(self.first, start)
        self.number = number  # the part being read (1: the first file)
        self.current = self.first if number == 1 else part_path(self.first, number)
        self._file = _open(self.current)
        self.parts: list[Path] = [self.current]  # the files read, in order
        self.version = 1  # the format version its header names (1: a recording from before the header)
        self.wall0: float | None = None  # from the header: what tells this recording's parts from other files
        self.skipped = 0  # malformed lines in the middle
        self.truncated = False  # it stopped (idle) in the middle of a line: the recorder died mid-write
        self.lines = 0  # lines decoded
        self.events = 0  # events returned
        self.live = False
        self.ended: Ended | None = None
        self._rest = b""  # the start of a line whose end has not been written yet
        self._discarding = False  # inside an overlong "line", skipped up to its end
        self._seen = False  # the first line of the file the follow started with has been read
        self._context = number > 1  # starting on a later part: its header's round (RunStarted) comes first
        self._end_pending = False  # the last line read was the recording's last line
        self._foreign: set[Path] = set()  # files named like a part that are not this recording's
        try:
            self._check_start()
        except FollowError:
            self.close()
            raise

    def _check_start(self) -> None:
        head = _head(self.current)
        if head is False:  # a complete first line that is not a header: a version 1 recording, or not one at all
            try:
                with open(self.current, "rb") as f:
                    first = f.readline(HEAD_MAX)
                item = decode_line(first.rstrip(b"\n")) if first.endswith(b"\n") else None
                ok = item is not None and (type(item) is not dict or item.get("format") == "stagewatch")
            except (OSError, ValueError):
                ok = False
            if not ok:
                raise FollowError(f"{self.current}: not a stagewatch recording")

    # --- reading ------------------------------------------------------------------------------------------------
    def read(self) -> list[AnyEvent]:
        """The events of the complete lines written since the last call (possibly none), in order."""
        out: list[AnyEvent] = []
        if self.ended is not None:
            return out
        budget = self.block
        at_end = False
        while budget > 0:
            data = self._file.read(budget)
            if data:
                budget -= len(data)
                self._took(data, out)
                continue
            following = self._next_part()
            if following is None:
                at_end = True
                break
            rest = self._file.read()  # what reached this part before the next one was made: all of it
            if rest:
                self._took(rest, out)
            self._switch(following)
        if at_end:
            self.live = True
            if self._end_pending and not self._rest:
                self.ended = "end"
                self.close()
        self.events += len(out)
        return out

    def _took(self, data: bytes, out: list[AnyEvent]) -> None:
        lines = (self._rest + data).split(b"\n")
        self._rest = lines.pop()
        if self._discarding and lines:
            lines.pop(0)  # the end of the overlong line
            self._discarding = False
        for line in lines:
            self._line(line, out)
        if len(self._rest) > MAX_LINE:
            self.skipped += 1
            self._rest = b""
            self._discarding = True

    def _line(self, line: bytes, out: list[AnyEvent]) -> None:
        try:
            item = decode_line(line)
        except ValueError:
            if not self._seen:
                raise FollowError(f"{self.current}: not a stagewatch recording") from None
            self.skipped += 1
            self._end_pending = False
            return
        if item is None:
            return
        self.lines += 1
        first, self._seen = not self._seen, True
        if type(item) is not dict:
            self._end_pending = False
            out.append(item)
            return
        if first and item.get("format") != "stagewatch":
            raise FollowError(f"{self.current}: not a stagewatch recording")
        if is_end(item):
            self._end_pending = True
            return
        self._end_pending = False  # a header: the start, a part's, or a later session appended to the file
        version = item.get("version")
        self.version = version if isinstance(version, int) else 0
        wall0 = item.get("wall0")
        if first and isinstance(wall0, (int, float)):
            self.wall0 = float(wall0)
        context = item.get("round")
        if first and self._context and isinstance(context, dict):  # a part that starts in the middle of a round
            try:
                out.append(from_record(context))
            except (ValueError, TypeError, KeyError):
                pass

    # --- rotation -----------------------------------------------------------------------------------------------
    def _next_part(self) -> Path | None:
        """The part after the current one, once it exists and starts with this recording's header."""
        if self.wall0 is None:
            return None  # no header (yet): a version 1 recording does not rotate
        for path in recording_parts(self.first)[1:]:
            if _part_number(self.first, path) <= self.number or path in self._foreign:
                continue
            head = _head(path)
            if head is None:  # just made, its header not written yet (or someone's empty file): looked at again
                continue
            if head is False or head.get("wall0") != self.wall0:
                self._foreign.add(path)
                continue
            return path
        return None

    def _switch(self, path: Path) -> None:
        if self._rest:  # the writer only ever leaves a part after a whole line
            self.skipped += 1
            self._rest = b""
        self._discarding = False
        self._file.close()
        self._file = _open(path)
        self.current, self.number = path, _part_number(self.first, path)
        self.parts.append(path)

    # --- idle and the end ---------------------------------------------------------------------------------------
    def empty(self) -> bool:
        """Nothing in the file yet (a recorder writes its header at once: an empty file left so is no recording)."""
        try:
            return os.fstat(self._file.fileno()).st_size == 0
        except (OSError, ValueError):
            return False

    def idle_s(self) -> float:
        """Seconds since the file being read last changed (by its mtime: a recording left long ago counts as idle
        from when it was left, not from when this tail opened it)."""
        try:
            return max(0.0, time.time() - os.fstat(self._file.fileno()).st_mtime)
        except (OSError, ValueError):
            return 0.0

    def stop(self, why: Ended) -> None:
        """End the follow here (`follow_batches` calls it at the idle deadline)."""
        if self.ended is None:
            self.ended = why
            self.truncated = bool(self._rest.strip())
            self.close()

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass


async def follow_batches(source: str | Path | Tail, *, poll: float = POLL_S,
                         idle: float | None = IDLE_S) -> AsyncIterator[list[AnyEvent]]:
    """The recording's events in batches as they are written: what is already there first (a batch per read, with
    no wait between: the catch-up), then whatever arrives, polled every `poll` seconds. Ends at the recording's
    last line, or when the file being read has not changed for `idle` seconds (None or 0: never). A path is
    opened here (`FollowError` if it cannot be followed); a `Tail` is closed when this ends either way."""
    tail = source if isinstance(source, Tail) else Tail(source)
    poll = min(max(poll, 0.005), 1.0)
    try:
        while tail.ended is None:
            batch = tail.read()
            if batch:
                yield batch
                continue
            if tail.ended is not None:
                break
            if idle and tail.idle_s() >= idle:
                tail.stop("idle")
                break
            if tail.wall0 is None and tail.empty() and tail.idle_s() >= EMPTY_WAIT_S:
                raise FollowError(f"{tail.current}: empty, and nothing has written to it for "
                                  f"{EMPTY_WAIT_S:.0f} s: not a recording being written")
            await asyncio.sleep(poll)
    finally:
        tail.close()


async def follow(source: str | Path | Tail, *, poll: float = POLL_S,
                 idle: float | None = IDLE_S) -> AsyncIterator[AnyEvent]:
    """`follow_batches`, one event at a time."""
    async for batch in follow_batches(source, poll=poll, idle=idle):
        for event in batch:
            yield event


# --- which recording ---------------------------------------------------------------------------------------------
def has_ended(path: str | Path) -> bool:
    """Whether the recording whose first file is `path` has been closed: its newest part's last line is the
    recording's last line (`recording.end_line`). Never raises (unreadable: False)."""
    last = recording_parts(path)[-1]
    try:
        with open(last, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - TAIL_PEEK))
            data = f.read(TAIL_PEEK)
    except OSError:
        return False
    if not data.endswith(b"\n"):
        return False  # a line is being written (or the file is empty)
    lines = data[:-1].rsplit(b"\n", 1)
    try:
        record = decode_line(lines[-1])
    except ValueError:
        return False
    return type(record) is dict and is_end(record)


def latest_recording(folder: str | Path | None = None, *, live_within: float = LIVE_WITHIN_S,
                     now: float | None = None) -> Path | None:
    """The recording to follow in `folder` (default: `default_recordings_dir()`): the newest that is still being
    written (no last line yet, changed within `live_within` seconds), else the newest at all; None when there is
    none. The path is its first file, as `follow` takes it."""
    found = newest_recordings(default_recordings_dir() if folder is None else folder, 20)
    now = time.time() if now is None else now
    for first in found:
        try:
            changed = max(p.stat().st_mtime for p in recording_parts(first) if p.exists())
        except (OSError, ValueError):
            continue
        if now - changed > live_within:
            break  # newest first: the rest are older still
        if not has_ended(first):
            return first
    return found[0] if found else None


def idle_words(seconds: float) -> str:
    """An idle deadline as people write it: 30m, 2h, 45s."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def newer_version(tail: Tail) -> bool:
    """A recording from a newer stagewatch (its events are read as far as this one knows them)."""
    return tail.version > RECORDING_VERSION
