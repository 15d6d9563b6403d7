"""The engine's own event loop, in a background thread, so that drawing the screen never delays a measurement.

Textual renders in its loop; a full repaint can take tens of milliseconds. Sharing that loop with the probes
(and the embedded sandbox) would add those milliseconds to stage durations and close timings. Here the engine
(run_queue, the sandbox, the recorder's flush timer) runs in a loop of its own; the app's worker only awaits
the result. Events still reach the app through the bus subscriber, which only appends to thread-safe buffers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
SWITCH_INTERVAL = 0.001


class EngineThread:
    """`start()`, then `await engine.run(coro)` from the app's loop (cancelling that await cancels the coro)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="stagewatch-engine", daemon=True)
        self._last: asyncio.Task[Any] | None = None  # engine-loop side: the run submitted last

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.close()

    def start(self) -> None:
        # Two threads share the GIL: by default a waiting thread gets it back only every 5 ms, which would add
        # up to 5 ms to each step of a measured exchange while the screen redraws. 1 ms keeps that small.
        if sys.getswitchinterval() > SWITCH_INTERVAL:
            sys.setswitchinterval(SWITCH_INTERVAL)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def _after_previous(self, coro: Coroutine[Any, Any, T]) -> T:
        """In the engine loop: let the previous run finish its cancellation first (it publishes its RunFinished
        and stops its sandbox), so two runs' events never interleave on the bus."""
        previous, self._last = self._last, asyncio.current_task()
        try:
            if previous is not None and not previous.done():
                previous.cancel()
                await asyncio.wait([previous])
        except BaseException:
            coro.close()
            raise
        return await coro

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` in the engine loop (after the previous run has wound down) and wait for it here; a cancelled
        wait cancels it there."""
        future = self.submit(self._after_previous(coro))
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise

    def call(self, func: Any, *args: Any) -> None:
        """Call a plain function in the engine thread (e.g. to close the recorder after the last event)."""
        self.loop.call_soon_threadsafe(func, *args)

    def stop(self, timeout: float = 3.0) -> None:
        """Cancel what still runs (letting it clean up: the sandbox stops, RunFinished is published), then end."""
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=timeout)

        try:
            self.submit(shutdown()).result(timeout + 0.5)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError, RuntimeError):
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
