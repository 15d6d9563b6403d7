"""The app's picture of the session: the engine's one fold of the event stream (`probes.model.RunModel`) plus what
only a screen needs — a bounded `FrameBuffer` per probe (the last `FRAME_CAP` frames and at most `FRAME_BYTES` of
data; the full record is on disk) and the wording helpers the panes share. Pure Python (no Textual), so the same
code serves the live run, a replay and the tests.
"""

from __future__ import annotations

from itertools import groupby
from operator import attrgetter

from probes.closecodes import close_meaning, close_sentence
from probes.events import Closed, Event, Frame, ProbeFinished, ProbeStarted, RunStarted
from probes.frames import FrameInfo, classify
from probes.model import RunModel, StageModel
from probes.sanitize import event_visible

FRAME_CAP = 5000  # frames shown per probe
FRAME_BYTES = 32 * 1024 * 1024  # frame data kept per probe for display
ROUND_FRAMES = 200  # a watch keeps the last frames of each probe of each of its last `keep_rounds` rounds
ROUND_BYTES = 64 * 1024  # and at most about this much of their data (100 rounds × 6 probes: ≤ 40 MB)

GLYPHS = {"queued": "·", "running": "▶", "pass": "✔", "fail": "✘", "error": "!", "skip": "–"}


class FrameBuffer:
    """The last frames of one probe run, for display. Filled and read by the UI thread only (the tick moves frames
    here from the app's inbox), so no locking. Frames are numbered from 0 in arrival order (`seq`); at most `cap`
    are shown and at most `2 * cap` (and `max_bytes` of data) kept.
    """

    __slots__ = ("start", "items", "cap", "max_bytes", "_bytes", "_info", "closes")

    def __init__(self, cap: int = FRAME_CAP, max_bytes: int = FRAME_BYTES) -> None:
        self.start = 0  # seq of items[0]
        self.items: list[Frame] = []
        self.cap = cap
        self.max_bytes = max_bytes
        self._bytes = 0
        self._info: dict[int, FrameInfo] = {}
        self.closes = 0  # close rows among the rows (shown in the stream, not counted as frames)

    def append(self, frame: Frame) -> None:
        self.extend([frame], 1)

    def extend(self, frames: list[Frame], count: int) -> None:
        """`count` frames arrived; `frames` are the last of them (all of them, or at least the last `cap`)."""
        kept = frames[-self.cap:] if len(frames) > self.cap else frames
        size = sum(map(len, map(_data, kept)))
        if count >= self.cap:  # they fill the view on their own: the older ones go
            self.start += len(self.items) + count - len(kept)
            self.items = list(kept)
            self._bytes = size
        else:
            self.start += count - len(kept)  # (always 0 here: fewer than `cap` arrived, all are kept)
            self.items.extend(kept)
            self._bytes += size
        if len(self.items) >= 2 * self.cap or self._bytes > self.max_bytes:
            self._trim()

    def _trim(self) -> None:
        items = self.items
        drop = max(0, len(items) - self.cap)
        kept = self._bytes - sum(map(len, map(_data, items[:drop])))
        while kept > self.max_bytes // 2 and drop < len(items) - 1:
            kept -= len(items[drop].data)
            drop += 1
        del items[:drop]
        self._bytes = kept
        self.start += drop
        if self._info:
            self._info = {k: v for k, v in self._info.items() if k >= self.start}

    def tail(self, cap: int, max_bytes: int) -> FrameBuffer:
        """A copy of the last `cap` rows (at most about `max_bytes` of data), numbered as here: what a watch keeps
        of a past round's frames."""
        copy = FrameBuffer(cap, max_bytes)
        copy.extend(self.items[-cap:], min(len(self.items), cap))
        copy.start = self.total - len(copy.items)
        copy.closes = self.closes
        return copy

    def snapshot(self) -> FrameBuffer:
        """A frozen copy of what is shown now (for a paused view while frames keep arriving)."""
        copy = FrameBuffer(self.cap, self.max_bytes)
        first = self.first
        copy.start, copy.items = first, self.items[first - self.start:]
        copy._info = self._info  # the same seqs classify the same
        return copy

    @property
    def total(self) -> int:
        """How many rows arrived (the next seq): frames and close rows."""
        return self.start + len(self.items)

    @property
    def frames(self) -> int:
        """How many WebSocket frames arrived (the rows less the close rows)."""
        return self.total - self.closes

    @property
    def first(self) -> int:
        """The seq of the oldest frame shown (at most `cap` are shown)."""
        return max(self.start, self.total - self.cap)

    def get(self, seq: int) -> Frame | None:
        i = seq - self.start
        return self.items[i] if 0 <= i < len(self.items) else None

    def info(self, seq: int) -> FrameInfo | None:
        """The classification of a frame, computed once (only for frames someone looks at)."""
        found = self._info.get(seq)
        if found is None:
            frame = self.get(seq)
            if frame is None:
                return None
            if len(self._info) >= 4 * self.cap:
                self._info.clear()
            found = self._info[seq] = (FrameInfo("close", "close", str(frame.data)) if frame.direction == "close"
                                       else classify(frame.data))
        return found


_data = attrgetter("data")


def close_row(closed: Closed) -> Frame:
    """The close as a row of the frame stream (where DevTools shows it too): direction "close", the sentence as
    its data. Only the UI makes these; the engine never publishes one."""
    return Frame(closed.t, closed.probe_id, "close", closed.after_ms, 0, sentence(closed))  # type: ignore[arg-type]


def sentence(closed: Closed) -> str:
    """'1000 Normal Closure — 'main cleanup' — server closed 50 ms after accept'."""
    return close_sentence(closed.code, closed.reason, closed.by, closed.after_ms)


def meaning(closed: Closed) -> str:
    return close_meaning(closed.code, closed.by)


def stage_clock(stage: StageModel, now_t: float) -> str:
    """'12 s of 30 s' while running (session time `now_t`), '' when not running."""
    if stage.status != "running" or stage.started_t is None:
        return ""
    took = fmt_ms(max(0.0, now_t - stage.started_t) * 1000.0)
    return f"{took} of {stage.limit_s:g} s" if stage.limit_s else took


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return ""
    if ms >= 10_000:
        return f"{ms / 1000:.1f} s"
    if ms >= 1000:
        return f"{ms / 1000:.2f} s"
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"


def fmt_countdown(seconds: float) -> str:
    if seconds <= 0:
        return f"expired {fmt_countdown(-seconds)[3:]} ago" if seconds < 0 else "expired"
    s = int(seconds)
    if s >= 3600:
        return f"in {s // 3600} h {s % 3600 // 60:02d} m"
    return f"in {s // 60}:{s % 60:02d}"


class SessionState(RunModel):
    """Everything the panes show: the engine's `RunModel` fold, plus a bounded frame buffer per probe for display.
    `take` moves frames into the buffers; every other event is folded by `apply_all`."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: dict[str, FrameBuffer] = {}
        # round n -> probe id -> the last frames of that probe in that round (the last `keep_rounds` rounds)
        self.round_frames: dict[int, dict[str, FrameBuffer]] = {}
        self._rounds_taken = 0  # RunStarted seen by `take` (the same count as history's round numbers)

    # --- frames -----------------------------------------------------------------------------------------------
    def take(self, events: list[Event]) -> list[Event]:
        """Move the frames among `events` (in arrival order) into their probes' buffers — only the last `cap` of a
        burst are kept — and return the other events, for `apply_all`, with every string they carry made visible
        (the app's one boundary for outside text; frames are made visible where they are drawn). Cost: C-speed per
        frame, Python per burst."""
        others: list[Event] = []
        for kind, group in groupby(events, type):
            if kind is Frame:
                frames = list(group)
                # Frames of two probes are never adjacent: ProbeFinished/ProbeStarted come between them.
                self.buffer(frames[0].probe_id).extend(frames, len(frames))
            else:
                for event in map(event_visible, group):
                    if isinstance(event, ProbeStarted):
                        self.frames[event.probe_id] = FrameBuffer()  # a probe (re)starts: its frames start afresh
                    elif isinstance(event, RunStarted):
                        self._rounds_taken += 1
                    elif isinstance(event, ProbeFinished):
                        self._keep_round_frames(event.probe_id)
                    elif isinstance(event, Closed):
                        buf = self.buffer(event.probe_id)
                        buf.append(close_row(event))
                        buf.closes += 1
                    others.append(event)
        return others

    def buffer(self, probe_id: str) -> FrameBuffer:
        buf = self.frames.get(probe_id)
        if buf is None:
            buf = self.frames[probe_id] = FrameBuffer()
        return buf

    def _keep_round_frames(self, probe_id: str) -> None:
        """A bounded copy of a probe's frames as its run ends, filed under the round it ran in."""
        n = self._rounds_taken
        if n == 0:
            return
        kept = self.round_frames.setdefault(n, {})
        kept[probe_id] = self.buffer(probe_id).tail(ROUND_FRAMES, ROUND_BYTES)
        keep = self.history.keep_rounds
        while len(self.round_frames) > keep:
            del self.round_frames[min(self.round_frames)]

    def frames_of_round(self, n: int, probe_id: str) -> FrameBuffer | None:
        """The frames kept of a probe's run in round `n` (None once the round is older than `keep_rounds`)."""
        return self.round_frames.get(n, {}).get(probe_id)

    def frames_total(self) -> int:
        return sum(buf.frames for buf in self.frames.values())
