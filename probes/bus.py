"""The one event stream: the engine publishes, every consumer subscribes.

Two ways to listen: a plain callback (called synchronously, in order, for every event — cheap enough for
floods; callbacks must not block), or `stream()`, an async iterator fed through an unbounded queue.
A listener that raises is reported once on stderr-free Notice and removed, so one broken consumer never
stops the run or the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from .events import Event, RunFinished

Listener = Callable[[Event], None]


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
        for listener in self._calling:
            try:
                listener(event)
            except Exception as exc:  # a consumer's bug must not stop the probe
                self.failures.append((listener, exc))
                self._remove(listener)

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
