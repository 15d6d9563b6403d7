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
        # engine-loop side: the runs not finished yet, and runs the app cancelled before they started
        self._runs: dict[object, asyncio.Task[Any]] = {}
        self._cancel_requested: set[object] = set()

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

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def _serial(self, coro: Coroutine[Any, Any, T], token: object) -> T:
        """In the engine loop: runs never overlap. Every earlier run still going is cancelled (once: a second
        cancel would cut short the cleanup the first one started — its close handshake, RunFinished, the sandbox's
        stop) and awaited before `coro` starts, so two runs' events never interleave on the bus."""
        if token in self._cancel_requested:  # the app gave up on this run before it even started
            self._cancel_requested.discard(token)
            coro.close()
            raise asyncio.CancelledError
        me = asyncio.current_task()
        assert me is not None
        earlier = [t for t in self._runs.values() if not t.done()]
        self._runs[token] = me
        try:
            try:
                for task in earlier:
                    _cancel_once(task)
                if earlier:
                    await asyncio.wait(earlier)
            except BaseException:
                coro.close()
                raise
            return await coro
        finally:
            self._runs.pop(token, None)

    def _cancel_run(self, token: object) -> None:
        task = self._runs.get(token)
        if task is None:
            self._cancel_requested.add(token)
        else:
            _cancel_once(task)

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` in the engine loop (after earlier runs have wound down) and wait for it here; a cancelled
        wait cancels it there, once."""
        token = object()
        future = self.submit(self._serial(coro, token))
        try:
            # shield: the wait's own cancellation must not reach the engine task as well (that would be a second
            # cancel); the engine loop is asked to cancel it exactly once instead.
            return await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:
            self.loop.call_soon_threadsafe(self._cancel_run, token)
            raise

    def stop(self, timeout: float = 3.0) -> None:
        """Cancel what still runs (letting it clean up: the sandbox stops, RunFinished is published), then end."""
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                _cancel_once(task)
            if tasks:
                await asyncio.wait(tasks, timeout=timeout)

        try:
            self.submit(shutdown()).result(timeout + 0.5)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError, RuntimeError):
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)


def _cancel_once(task: asyncio.Task[Any]) -> None:
    """Cancel a task unless it is already being cancelled (its cleanup is under way: let it finish)."""
    if not task.done() and not task.cancelling():
        task.cancel()
