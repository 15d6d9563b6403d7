"""The recording writer process: turns the recorder's batches into JSON Lines on disk, on a core of its own.

`python -m probes.recwriter FD WALL0 [MAX_BYTES PATH]` reads batches from stdin — an 8-byte little-endian length,
then a marshalled list whose items are either a finished line (str, for the rare events; the empty line marks where
a round starts) or a block of text frames as columns (see `recording.pack_frames`) — and writes each batch to file
descriptor FD with one write (a few more where a part starts). Formatting frames as JSON
here instead of in the probing process (one GIL shared by the engine and the UI) keeps a recorded flood from
slowing the rate it is read at; it is done a block at a time in C (orjson), so this process also takes little of a
core the machine may not have to spare (a third of what formatting line by line took).

With MAX_BYTES and PATH (the first file's path, FD's) it rotates the recording into parts next to PATH (see
`probes.rotation`) and announces each part it opens as a line `part N` on stdout.

It ignores SIGINT (Ctrl-C in the terminal is the parent's to handle) and ends at end of input, after writing
everything it received: when the parent dies, even by `kill -9`, what it had handed over still reaches the disk.
A write error is one line on stdout (any line but a `part N` one: the parent reports it) and exit status 1.
"""

from __future__ import annotations

import marshal
import os
import signal
import sys
from pathlib import Path
from typing import Any

from .recording import literal_cache, part_header, write_items
from .rotation import PartWriter


def _read_exact(stream: Any, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _sink(argv: list[str], fd: int, wall0: float) -> PartWriter:
    max_bytes = int(argv[3]) if len(argv) > 4 else None
    first = Path(argv[4]) if len(argv) > 4 else Path(os.devnull)
    return PartWriter(fd, first, max_bytes, part_header(wall0), on_part=lambda n: _say(f"part {n}"))


def main(argv: list[str]) -> int:
    fd, wall0 = int(argv[1]), float(argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin = sys.stdin.buffer
    ids: dict[str, str] = {}
    literals = literal_cache()
    sink = _sink(argv, fd, wall0)
    while True:
        head = _read_exact(stdin, 8)
        if len(head) < 8:
            return 0  # end of input: the parent closed (or died); everything received is written
        size = int.from_bytes(head, "little")
        payload = _read_exact(stdin, size)
        if len(payload) < size:
            return 0  # the parent died mid-batch: that batch was never complete
        items = marshal.loads(payload)
        try:
            write_items(sink, items, wall0, literals, ids)
        except OSError as exc:
            _say(str(exc.strerror or exc).replace("\n", " "))
            return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
