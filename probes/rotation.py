"""Rotating a recording into part files: `rec.jsonl`, then `rec.part2.jsonl`, `rec.part3.jsonl`, … next to it.

A long watch writes tens of megabytes an hour; with a cap (`config.recording.max_file_mb`) the recording goes on in
a new part once the current file has passed it. The switch happens at a round boundary (just before a
`RunStarted` line) once the file is over the cap, and at the latest at a line boundary before the file would pass
twice the cap (a round that alone outgrows the cap is split). So a part never exceeds 2x the cap, unless one single
line does: a part always takes at least one line. Every part starts with its own header line (the same `wall0`,
its part number, and — when it starts in the middle of a round — that round's `RunStarted` record), so each part
reads on its own, and the parts read in order give every event exactly once.

`PartWriter` is the one place bytes reach a recording file, in the recorder (inline) and in its writer process
(`probes.recwriter`): it counts what it writes (arithmetic, no syscall), so the cap is checked once per batch
and the switch costs one `open` and one header write in whichever process writes (the writer process, off the
event loop, when the recorder offloads). Standard library only: the writer process imports it and starts fast.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

MIN_PART_BYTES = 4096  # a smaller cap is raised to this: a part per line or two helps nobody
MAX_PART_NUMBER_TRIES = 1000  # part names already taken (files left by an earlier session) skipped at a switch
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)

# (part number, the round's RunStarted record or None) -> the part's header line, as bytes
HeaderMaker = Callable[[int, dict[str, Any] | None], bytes]


def part_path(first: Path, number: int) -> Path:
    """The path of part `number` (2, 3, …) of the recording whose first file is `first`."""
    return first.with_name(f"{first.stem}.part{number}{first.suffix}")


def _part_pattern(first: Path) -> re.Pattern[str]:
    return re.compile(re.escape(first.stem) + r"\.part([1-9][0-9]{0,8})" + re.escape(first.suffix) + r"\Z")


def recording_parts(path: str | Path) -> list[Path]:
    """The files of a recording, in order: `path` itself, then its parts (`<stem>.partN<suffix>`, N >= 2) that
    exist as files next to it, by number (a gap does not end the list). A part file given as `path` has no parts of
    its own: it reads alone. Never raises (an unreadable folder: just `path`)."""
    first = Path(path)
    pattern = _part_pattern(first)
    found: list[tuple[int, Path]] = []
    try:
        with os.scandir(first.parent) as entries:
            for entry in entries:
                match = pattern.match(entry.name)
                if match and int(match[1]) >= 2 and entry.is_file():
                    found.append((int(match[1]), first.with_name(entry.name)))
    except OSError:
        pass
    return [first] + [p for _, p in sorted(found)]


def _write_all(fd: int, data: memoryview) -> int:
    """Write all of `data`; returns the number of write calls it took."""
    writes = 0
    while data:
        data = data[os.write(fd, data):]
        writes += 1
    return writes


class PartWriter:
    """Writes a recording's bytes (whole JSON lines) to its current part, switching parts by the rule above.

    `fd` is the first file, opened by the caller, which keeps it (this class closes only the parts it opened).
    `max_bytes` None, or a file that is not a regular file (a device, a pipe): no rotation. Every part opened is
    reported to `on_part(number)`. An OSError (a write, or a part that cannot be created) is raised to the caller,
    which stops recording as for any write error.
    """

    def __init__(self, fd: int, first: Path, max_bytes: int | None, header: HeaderMaker,
                 on_part: Callable[[int], None] | None = None) -> None:
        self.first_fd = self.fd = fd
        self.first = first
        self.header = header
        self.on_part = on_part
        self.number = 1
        self.parts: list[int] = []  # the part numbers this writer opened (2, 3, … unless names were taken)
        self.round: dict[str, Any] | None = None  # the RunStarted record of the round being written
        self._next_round: dict[str, Any] | None = None  # the one whose line the next write begins with
        try:
            info = os.fstat(fd)
        except OSError:
            info = None
        regular = info is not None and stat.S_ISREG(info.st_mode)
        self.size = info.st_size if info is not None and regular else 0  # appending to a file: what it holds
        self.fresh = self.size == 0  # nothing in this part yet but (maybe) its header
        self.max_bytes = max(max_bytes, MIN_PART_BYTES) if max_bytes is not None and regular else None

    def boundary(self, round_line: str | None) -> int:
        """A round starts (its RunStarted line comes next, `round_line`): switch parts now if over the cap.
        Returns the write calls it took."""
        writes = 0
        if self.max_bytes is not None and self.size >= self.max_bytes and not self.fresh:
            writes = self._switch(None)
        if round_line is not None and self.max_bytes is not None:
            self._next_round = _record_of(round_line)
        return writes

    def write(self, data: bytes) -> int:
        """Write whole lines, starting a new part at a line boundary before this one would pass 2x the cap.
        Returns the write calls it took."""
        starting, self._next_round = self._next_round, None
        if starting is not None:
            self.round = None  # a part that starts here starts with the round's own RunStarted line
        if self.max_bytes is None or self.size + len(data) <= 2 * self.max_bytes:
            writes = _write_all(self.fd, memoryview(data))
            self._wrote(len(data))
        else:
            writes = self._write_split(data, 2 * self.max_bytes, starting)
        self.round = starting or self.round
        return writes

    def _write_split(self, data: bytes, limit: int, starting: dict[str, Any] | None) -> int:
        writes, start, end = 0, 0, len(data)
        while start < end:
            room = max(limit - self.size, 0)
            if end - start <= room:
                cut = end
            else:
                cut = data.rfind(b"\n", start, start + room) + 1  # the end of the last whole line that fits
                if cut <= start:
                    if not self.fresh:
                        writes += self._switch(self.round)
                        continue
                    cut = data.find(b"\n", start) + 1 or end  # one line larger than a part: it goes in whole
            writes += _write_all(self.fd, memoryview(data)[start:cut])
            self._wrote(cut - start)
            start = cut
            if starting is not None:  # the round's RunStarted line (this batch began with it) is written
                self.round = starting
            if start < end:
                writes += self._switch(self.round)
        return writes

    def _wrote(self, n: int) -> None:
        self.size += n
        if n:
            self.fresh = False

    def _switch(self, round_record: dict[str, Any] | None) -> int:
        """Open the next part (a name already taken is skipped, never appended to) and write its header."""
        number = self.number + 1
        for _ in range(MAX_PART_NUMBER_TRIES):
            try:
                fd = os.open(part_path(self.first, number), _OPEN_FLAGS, 0o600)
                break
            except FileExistsError:
                number += 1
        else:
            raise OSError(f"no free part name after {self.first.name} part {self.number}")
        header = self.header(number, round_record)
        try:
            writes = _write_all(fd, memoryview(header))
        except OSError:
            os.close(fd)
            raise
        self._close_part()
        self.fd, self.number, self.size, self.fresh = fd, number, len(header), True
        self.parts.append(number)
        if self.on_part is not None:
            self.on_part(number)
        return writes

    def _close_part(self) -> None:
        if self.fd != self.first_fd:
            try:
                os.close(self.fd)
            except OSError:
                pass

    def close(self) -> None:
        """Close the part this writer opened (the first file stays the caller's)."""
        self._close_part()
        self.fd = self.first_fd


def _record_of(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
