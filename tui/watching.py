"""Watching a deploy from the app: the queue run in rounds, in the engine's own loop (see `tui.engine`).

`run_rounds` is one long engine run: it holds ONE embedded sandbox for all rounds (`probes.runner.shared_sandbox`:
a deploy the sandbox plays goes on across rounds), runs the queue, waits the interval, and again. The app and the
loop share a `WatchControl`: the app (UI thread) sets the interval, asks for the next round now or for a stop after
the round; the loop (engine thread) says when the next round is due. Plain attribute writes cross the threads; the
one wake-up goes through `loop.call_soon_threadsafe`. No Textual here: the rounds are engine events on the bus,
folded by the app like any run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence

from probes.bus import EventBus
from probes.clock import Clock
from probes.config import Config, ResolvedTarget
from probes.pytest_run import run_pytest
from probes.runner import RunOptions, run_beside, run_queue, shared_sandbox

PRESETS = (5.0, 10.0, 30.0, 60.0)  # the interval choices offered in the palette


def interval_words(seconds: float) -> str:
    """'10 s', '1 m', '1 m 30 s', '500 ms'."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:g} s"
    m, s = divmod(round(seconds), 60)
    return f"{m} m" + (f" {s} s" if s else "")


def duration_text(seconds: float) -> str:
    """What `probes.durations.parse_duration` reads back: '500ms', '10s', '2m', '90s'."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


class WatchControl:
    """What the app and the rounds loop share. Written by the app: `interval`, `options` (the next round's),
    `stopping`; written by the loop: `next_at` (epoch seconds of the next round while it waits, else None),
    `rounds` (rounds started by this watch)."""

    def __init__(self, interval: float, options: RunOptions) -> None:
        self.interval = interval
        self.options = options
        self.stopping = False
        self.next_at: float | None = None
        self.rounds = 0
        self._round_end: float | None = None  # wall time the last round ended (the wait counts from there)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._now = False

    # --- the app's side (any thread) ------------------------------------------------------------------------
    def set_interval(self, seconds: float) -> None:
        """Takes effect at once: a wait under way is measured again from the end of the last round."""
        self.interval = seconds
        if self._round_end is not None and self.next_at is not None:
            self.next_at = self._round_end + seconds
        self._poke()

    def run_now(self) -> None:
        """Cut the wait short: the next round starts now (no effect while a round runs)."""
        self._now = True
        self._poke()

    def stop_after_round(self) -> None:
        self.stopping = True
        self._poke()

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop closed meanwhile
                pass

    # --- the loop's side (engine loop) ----------------------------------------------------------------------
    def bind(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()

    async def wait(self) -> None:
        """Until the interval has passed since the last round ended, `run_now()` or `stop_after_round()`."""
        assert self._wake is not None
        self._round_end = time.time()
        self.next_at = self._round_end + self.interval
        try:
            while not (self._now or self.stopping):
                self._wake.clear()
                left = self._round_end + self.interval - time.time()
                if left <= 0:
                    return
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except TimeoutError:
                    return
        finally:
            self._now = False
            self.next_at = None


async def run_rounds(config: Config, target: ResolvedTarget, bus: EventBus, clock: Clock,
                     control: WatchControl, pytest_args: Sequence[str] | None = None) -> None:
    """Rounds of the queue until `control.stopping` (after a round) or cancelled (the run under way ends as
    interrupted and the shared sandbox stops)."""
    control.bind()
    async with shared_sandbox(target, control.options) as shared:
        beside = None  # held sessions run once, beside the rounds (their drops reach the timeline)
        if pytest_args is None:
            beside = asyncio.ensure_future(run_beside(config, target, bus, dataclasses.replace(
                control.options, sandbox=shared.sandbox), clock))
        try:
            while not control.stopping:
                control.rounds += 1
                # the app may have changed the options (fail-fast) between rounds; the sandbox stays the same
                options = dataclasses.replace(control.options, sandbox=shared.sandbox,
                                              holds="without" if pytest_args is None else "with")
                if pytest_args is not None:  # each round runs the team's suite
                    await run_pytest(config, target, bus, options, clock, pytest_args)
                else:
                    await run_queue(config, target, bus, options, clock)
                if control.stopping:
                    break
                await control.wait()
        finally:
            if beside is not None and not beside.done():
                beside.cancel()
                await asyncio.gather(beside, return_exceptions=True)
