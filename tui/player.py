"""Replay's player: a recording's events delivered at recorded pace × speed, with pause, single step and speed
changes. It only calls `deliver(event)` (the app's inbox append, as the live bus does), so a replay folds into the
same model and draws the same panes as the live run did. No Textual here: the app's worker awaits `play()`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from probes.events import Event, Frame

SPEEDS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 10.0, 50.0, math.inf)
CHUNK = 2000  # events delivered before yielding to the UI
MAX_WAIT = 0.25  # a long gap between events is waited in slices, so speed changes apply at once


def speed_label(speed: float) -> str:
    return "max speed" if math.isinf(speed) else f"{speed:g}×"


class Player:
    def __init__(self, events: list[Event], deliver: Callable[[Event], None], *, speed: float = 1.0,
                 paused: bool = False) -> None:
        self.events = events
        self.deliver = deliver
        self.index = 0  # the next event to deliver
        self.t = events[0].t if events else 0.0  # the recording's clock
        self.speed = speed
        self.paused = paused
        self.done = not events
        self._wake = asyncio.Event()
        self._steps = 0

    # --- controls (called from the app's handlers) --------------------------------------------------------------
    def toggle_pause(self) -> None:
        self.paused = not self.paused
        self._wake.set()

    def step(self) -> None:
        """Pause, and deliver the next event (or the next burst of frames)."""
        self.paused = True
        self._steps += 1
        self._wake.set()

    def change_speed(self, direction: int) -> None:
        """One notch faster (+1) or slower (-1) on SPEEDS."""
        def distance(k: int) -> float:
            a, b = SPEEDS[k], self.speed
            if math.isinf(a) or math.isinf(b):
                return 0.0 if a == b else 99.0
            return abs(math.log(a) - math.log(b))

        i = min(range(len(SPEEDS)), key=distance)
        self.speed = SPEEDS[max(0, min(len(SPEEDS) - 1, i + direction))]
        self._wake.set()

    def position(self) -> str:
        """'event 12/340 · t 1.20/3.40 s', with what comes next."""
        n = len(self.events)
        last = self.events[-1].t if n else 0.0
        gap = self.events[self.index].t - self.t if self.index < n else 0.0
        waiting = f" · next event in {gap:.1f} s (+ speeds up)" if gap >= 1.0 and not self.done else ""
        return f"event {self.index:,}/{n:,} · t {self.t:.2f}/{last:.2f} s" + (" · finished" if self.done else waiting)

    # --- the worker ---------------------------------------------------------------------------------------------
    async def play(self) -> None:
        loop = asyncio.get_running_loop()
        events, n = self.events, len(self.events)
        last_real = loop.time()
        while self.index < n:
            if self.paused:
                if self._steps:
                    self._steps -= 1
                    self._deliver_step()
                    continue
                self._wake.clear()
                await self._wake.wait()
                last_real = loop.time()
                continue
            now = loop.time()
            if math.isinf(self.speed):
                self.t = events[min(n - 1, self.index + CHUNK - 1)].t
            else:
                self.t += (now - last_real) * self.speed
            last_real = now
            delivered = 0
            while self.index < n and events[self.index].t <= self.t and delivered < CHUNK:
                self.deliver(events[self.index])
                self.index += 1
                delivered += 1
            if self.index >= n:
                break
            if delivered >= CHUNK:
                await asyncio.sleep(0)
                continue
            wait = (events[self.index].t - self.t) / self.speed
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), min(max(wait, 0.001), MAX_WAIT))
            except TimeoutError:
                pass
        self.done = True
        if n:
            self.t = events[-1].t

    def _deliver_step(self) -> None:
        """One step: the next event, or the whole burst of frames that comes next."""
        events, n = self.events, len(self.events)
        if self.index >= n:
            return
        first = events[self.index]
        self.deliver(first)
        self.index += 1
        if type(first) is Frame:
            while self.index < n and type(events[self.index]) is Frame:
                self.deliver(events[self.index])
                self.index += 1
        self.t = events[self.index - 1].t
