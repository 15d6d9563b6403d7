"""The recording writer process: turns the recorder's batches into JSON Lines on disk, on a core of its own.

`python -m probes.recwriter FD WALL0` reads batches from stdin — an 8-byte little-endian length, then a marshalled
list whose items are either a finished line (str, for the rare events) or a block of text frames as columns (see
`recording.pack_frames`) — and writes each batch to file descriptor FD with one write. Formatting frames as JSON
here instead of in the probing process (one GIL shared by the engine and the UI) keeps a recorded flood from
slowing the rate it is read at; it is done a block at a time in C (orjson), so this process also takes little of a
core the machine may not have to spare (a third of what formatting line by line took).

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

from .recording import encode_items, literal_cache


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
    literals = literal_cache()
    while True:
        head = _read_exact(stdin, 8)
        if len(head) < 8:
            return 0  # end of input: the parent closed (or died); everything received is written
        size = int.from_bytes(head, "little")
        payload = _read_exact(stdin, size)
        if len(payload) < size:
            return 0  # the parent died mid-batch: that batch was never complete
        items = marshal.loads(payload)
        data = memoryview(encode_items(items, wall0, literals, ids))
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError as exc:
            sys.stdout.write(f"{exc.strerror or exc}\n")
            sys.stdout.flush()
            return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
