"""The recording writer process: turns the recorder's batches into JSON Lines on disk, on a core of its own.

`python -m probes.recwriter FD WALL0` reads batches from stdin — an 8-byte little-endian length, then a marshalled
list whose items are either a finished line (str, for the rare events) or a frame's fields (a tuple) — and writes
each batch to file descriptor FD with one write. Formatting a frame as JSON costs about as much as reading it off
the socket; doing it here instead of in the probing process (one GIL shared by the engine and the UI) keeps a
recorded flood from halving the rate it is read at.

It ignores SIGINT (Ctrl-C in the terminal is the parent's to handle) and ends at end of input, after writing
everything it received: when the parent dies, even by `kill -9`, what it had handed over still reaches the disk.
A write error is one line on stdout (the parent reports it) and exit status 1.
"""

from __future__ import annotations

import marshal
import os
import signal
import sys
from typing import Any

from .recording import encode_lines, frame_line


def _read_exact(stream: Any, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def main(argv: list[str]) -> int:
    fd, wall0 = int(argv[1]), float(argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin = sys.stdin.buffer
    ids: dict[str, str] = {}
    while True:
        head = _read_exact(stdin, 8)
        if len(head) < 8:
            return 0  # end of input: the parent closed (or died); everything received is written
        size = int.from_bytes(head, "little")
        payload = _read_exact(stdin, size)
        if len(payload) < size:
            return 0  # the parent died mid-batch: that batch was never complete
        items = marshal.loads(payload)
        lines = [item if type(item) is str else frame_line(item, wall0, ids) for item in items]
        data = memoryview(encode_lines(lines))
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError as exc:
            sys.stdout.write(f"{exc.strerror or exc}\n")
            sys.stdout.flush()
            return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
