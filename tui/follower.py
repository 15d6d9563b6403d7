"""Follow's player: the events of a recording another stagewatch is writing, delivered as they are written.

Like `tui.player.Player` it only calls `deliver(event)` (the app's inbox append, as the live bus does), so the
followed run folds into the same model and draws the same panes as it does for the one recording it. What was
written before joining comes first, as fast as it reads, in chunks with a yield to the UI between them (the
catch-up); then each line as it lands. `done` (and `on_done`) when the recording ends: its recorder closed it,
or it stopped changing for the idle deadline, or it could not be read. No Textual here: the app's worker awaits
`run()`; cancelling that worker stops the follow and closes the file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from probes.follow import IDLE_S, POLL_S, FollowError, Tail, follow_batches, idle_words
from probes.sanitize import one_line

CHUNK = 2000  # events delivered before yielding to the UI (as the player does)


class Follower:
    def __init__(self, path: str | Path, deliver: Callable[[Any], None], *, poll: float = POLL_S,
                 idle: float | None = IDLE_S, on_done: Callable[[Follower], None] | None = None,
                 tail: Tail | None = None) -> None:
        self.path = Path(path)
        self.deliver = deliver
        self.poll = poll
        self.idle = idle
        self.on_done = on_done
        self._tail = tail  # opened in run() unless given (the CLI opens it first, to refuse a bad path at once)
        self.delivered = 0  # events delivered so far
        self.last_t: float | None = None  # the recording's clock at the last event delivered
        self.live = False  # the catch-up is over: what comes now is being written as we watch
        self.done = False
        self.ended: str | None = None  # "end" (the recorder closed it), "idle", "error"
        self.error: str | None = None  # why it could not be followed (one line, sanitised)
        self.skipped = 0
        self.truncated = False

    async def run(self) -> None:
        tail: Tail | None = self._tail
        try:
            if tail is None:
                tail = self._tail = Tail(self.path)
            async for batch in follow_batches(tail, poll=self.poll, idle=self.idle):
                for start in range(0, len(batch), CHUNK):
                    chunk = batch[start:start + CHUNK]
                    for event in chunk:
                        self.deliver(event)
                    self.delivered += len(chunk)
                    self.last_t = chunk[-1].t
                    if start + CHUNK < len(batch):
                        await asyncio.sleep(0)
                self.live = tail.live
                await asyncio.sleep(0)  # the UI draws between batches, however fast they come
            self.ended = tail.ended
        except FollowError as exc:
            self.error, self.ended = one_line(str(exc)), "error"
        finally:
            if tail is not None:
                tail.close()
                self.live = self.live or tail.live
                self.skipped, self.truncated = tail.skipped, tail.truncated
            self.done = True
            if self.on_done is not None:
                self.on_done(self)

    def position(self) -> str:
        """'following NAME · 1,234 events · live' — or catching up, or how it ended."""
        if self.error is not None:
            state = f"cannot follow: {self.error}"
        elif self.ended == "end":
            state = "finished (the recording was closed)"
        elif self.ended == "idle":
            state = (f"stopped: nothing new for {idle_words(self.idle or 0)} (its recorder went without closing "
                     "it)")
        elif self.done:
            state = "stopped"
        else:
            state = "live" if self.live else "catching up"
        skipped = f" · {self.skipped} unreadable line(s) skipped" if self.skipped else ""
        return one_line(f"following {self.path.name} · {self.delivered:,} events · {state}{skipped}")
