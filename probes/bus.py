"""The one event stream: the engine publishes, every consumer subscribes.

Two ways to listen: a plain callback (called synchronously, in order, for every event — cheap enough for
floods; callbacks must not block), or `stream()`, an async iterator fed through an unbounded queue.
A listener that raises is removed and reported once, as an error `Notice` to the remaining listeners (headless
prints it on stderr, the TUI shows a toast), so one broken consumer never stops the run or the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from .events import Event, Notice, RunFinished

Listener = Callable[[Event], object]  # what it returns is ignored


class EventBus:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._calling: tuple[Listener, ...] = ()  # a copy to iterate: listeners may unsubscribe while called
        self.failures: list[tuple[Listener, BaseException]] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(event)` for every event from now on. Returns an unsubscribe function."""
        self._listeners.append(listener)
        self._calling = tuple(self._listeners)

        def unsubscribe() -> None:
            self._remove(listener)

        return unsubscribe

    def _remove(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)
            self._calling = tuple(self._listeners)

    def publish(self, event: Event) -> None:
        failed: list[tuple[Listener, Exception]] | None = None
        for listener in self._calling:
            try:
                listener(event)
            except Exception as exc:  # a consumer's bug must not stop the probe
                self.failures.append((listener, exc))
                self._remove(listener)
                if failed is None:
                    failed = []
                failed.append((listener, exc))
        if failed is not None:
            # After the event has reached everyone, and only to the listeners still subscribed: the failed one never
            # sees its own Notice, and one that raises on a Notice is removed in turn (so this ends).
            t = getattr(event, "t", 0.0)
            for broken, error in failed:
                self.publish(Notice(t, "error", failure_message(broken, error)))

    async def stream(self) -> AsyncIterator[Event]:
        """Async iterator over events until (and including) RunFinished."""
        queue: asyncio.Queue[Event] = asyncio.Queue()
        unsubscribe = self.subscribe(queue.put_nowait)
        try:
            while True:
                event = await queue.get()
                yield event
                if isinstance(event, RunFinished):
                    return
        finally:
            unsubscribe()


def listener_name(listener: object) -> str:
    """`Recorder.handle`, `list.append`, `my_callback`; for other callables the type's name."""
    name = getattr(listener, "__qualname__", None) or type(listener).__qualname__
    return name if isinstance(name, str) else repr(listener)


def failure_message(listener: object, exc: BaseException, limit: int = 300) -> str:
    """One line (no traceback): which listener failed, with what, and that the run goes on."""
    detail = " ".join(str(exc).split())
    if len(detail) > limit:
        detail = detail[:limit - 1] + "…"
    what = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return f"event listener {listener_name(listener)} failed ({what}) and was removed; the run goes on"
