"""The session clock: seconds since the session started (monotonic), and the wall time at zero."""

from __future__ import annotations

import time


class Clock:
    def __init__(self) -> None:
        self.start = time.monotonic()
        self.wall = time.time()

    def __call__(self) -> float:
        return round(time.monotonic() - self.start, 6)
