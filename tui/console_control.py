"""The app's side of the console (x, the palette, `stagewatch console`): it shows the composer in place of the
Stages pane, keeps one `probes.console.Console` in the engine's loop, and turns each `ConsolePanel.Do` into a call
there. The session is the probe `console`: the queue, frames, close and diagnosis panes show it as they show any
probe, and the recorder records it. Errors a person can fix (bad JSON, an illegal close code, not connected) are a
toast; nothing here raises into the app.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from probes.console import CONSOLE_ID, Console, ConsoleError, Overrides, parse_claims, parse_headers, templates
from probes.sanitize import one_line
from tui.widgets.console import Composer, ConsolePanel, save_message

if TYPE_CHECKING:
    from tui.app import StagewatchApp

T = TypeVar("T")


class ConsoleControl:
    def __init__(self, app: StagewatchApp) -> None:
        self.app = app
        self.console: Console | None = None
        self.panel: ConsolePanel | None = None

    @property
    def is_open(self) -> bool:
        return self.panel is not None

    async def toggle(self) -> None:
        if self.panel is None:
            await self.open()
        else:
            await self.close_panel()

    async def open(self) -> None:
        app = self.app
        assert app.target is not None and app.engine is not None
        self.panel = ConsolePanel(templates(app.target), id="console")
        app.query_one("#stages-box").display = False
        await app.query_one("#top").mount(self.panel)
        self.panel.query_one(Composer).focus()
        self.console = Console(app.config, app.target, app.bus, app.clock, app.options)
        alone = app.state.runs == 0 and not app.state.running  # nothing else ran: the session is the run
        if await self._call(self.console.open(own_run=alone)) is not False:
            if not app.state.base_url:  # no queue ran yet: the header names the console's target
                app.state.target, app.state.base_url = app.target.name, self.console.base_url
            app.user_pinned = True
            await self._connect(Overrides())

    async def close_panel(self) -> None:
        console, self.console = self.console, None
        panel, self.panel = self.panel, None
        if panel is not None:
            await panel.remove()
        self.app.query_one("#stages-box").display = True
        self.app.query_one("#queue").focus()
        if console is not None:
            await self._call(console.shutdown())

    async def handle(self, do: ConsolePanel.Do) -> None:
        console, panel = self.console, self.panel
        if console is None or panel is None:
            return
        if do.action == "reconnect":
            try:
                add, remove = parse_headers(do.data.get("headers", ""))
                ov = Overrides(transport=do.data.get("transport", "config"), add_headers=add, remove_headers=remove,
                               claims=parse_claims(do.data.get("claims", "")),
                               subprotocol=do.data.get("subprotocol", "").strip() or None)
            except ConsoleError as exc:
                self._warn(str(exc))
                return
            await self._connect(ov)
        elif do.action == "send":
            if await self._call(console.send(do.data["text"])) is not False:
                panel.sent(do.data["text"])
                self._said(console)
        elif do.action == "ping":
            if await self._call(console.ping()) is not False:
                self._said(console)
        elif do.action == "close":
            if await self._call(console.close(int(do.data["code"]),
                                              str(do.data["reason"]) or "stagewatch console")) is not False:
                self._said(console)
        elif do.action == "save":
            try:
                path = save_message(do.data["text"])
            except OSError as exc:
                self._warn(f"not saved: {exc}")
                return
            panel.saved_one(do.data["text"])
            self.app.notify(one_line(f"saved to {path}"), timeout=3, markup=False)

    async def _connect(self, ov: Overrides) -> None:
        if self.console is None:
            return
        self.app.focus_probe_id(CONSOLE_ID)
        status = await self._call(self.console.connect(ov))
        self.app.focus_probe_id(CONSOLE_ID)
        if isinstance(status, str) and status != "pass" and self.console is not None and self.console.last:
            name, _, detail = self.console.last
            self._warn(f"{name} failed ({ov.words()}): {detail} — see Close and Diagnosis")
        elif status == "pass":
            self.app.notify(one_line(f"connected ({ov.words()})"), timeout=3, markup=False)

    def _said(self, console: Console) -> None:
        """The action's stage result as a toast: the Stages pane is where the composer is."""
        if console.last is None:
            return
        name, status, detail = console.last
        if status == "pass":
            self.app.notify(one_line(f"{name}: {detail}"), timeout=3, markup=False)
        else:
            self.app.notify(one_line(f"{name} {status.upper()}: {detail}"), severity="warning", timeout=8,
                            markup=False)

    async def shutdown(self) -> None:
        """Leaving the app: the session is closed (1001) and, when it was the run, ended, so the recording is
        whole. Bounded by the engine's stop."""
        console, self.console = self.console, None
        if console is not None and self.app.engine is not None:
            try:
                await asyncio.wait_for(asyncio.wrap_future(self.app.engine.submit(console.shutdown())),
                                       console.target.timeouts.close + 1.0)
            except Exception:  # noqa: BLE001 - leaving anyway
                pass

    async def _call(self, coro: Coroutine[Any, Any, T]) -> T | bool:
        """Run in the engine's loop (beside a queue run, never cancelling it); False when it could not."""
        engine = self.app.engine
        if engine is None:
            coro.close()
            return False
        try:
            return await asyncio.wrap_future(engine.submit(coro))
        except ConsoleError as exc:
            self._warn(str(exc))
        except Exception as exc:  # noqa: BLE001 - the console reports, the app stays up
            self.app.notify(one_line(f"console: {type(exc).__name__}: {exc}"), severity="error", timeout=8,
                            markup=False)
        return False

    def _warn(self, text: str) -> None:
        self.app.notify(one_line(text), severity="warning", timeout=5, markup=False)
