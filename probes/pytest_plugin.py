"""The pytest plugin of `stagewatch run --pytest`: loaded from outside (`python -m pytest -p probes.pytest_plugin`),
it streams what the user's own suite does, as it happens, to the engine. Their tests and conftest stay unchanged.

Active only when the engine set `STAGEWATCH_PYTEST_SOCKET` (a Unix socket in a private 0700 directory); the
options (priority mapping, bounds, the name of the secret's variable) come as JSON in `STAGEWATCH_PYTEST_OPTIONS`.
Every process that runs tests — pytest itself, or each pytest-xdist worker — connects on its own and writes JSON
lines; an xdist controller, which only relays its workers' reports, stays silent so nothing is sent twice.

Messages (one JSON object a line, `type` first): `hello`, `collected` (node ids with their priority, in run order),
`collect_error`, `start`, `phase` (setup/call/teardown begins), `report` (a phase's outcome, duration, the crash
line, the failure text bounded and redacted, skip/xfail reason), `finish` (frames counted), `done`, and from the
tap (`probes/pytest_tap.py`) `ws_connect`, `ws_response`, `ws_failed`, `ws_frame`, `ws_close`, `http`.

Collection is reordered by priority (P0 first, stable) from markers and name patterns; `max_priority` deselects
the rest. Everything is built on pytest's hooks and reports, never on its terminal output.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .pytest_items import OPTIONS_ENV, SOCKET_ENV, priority_of, probe_id
from .pytest_tap import Limits, RunningTests, install
from .redact import Redactor, scrub_jwt_fragments


class Channel:
    """One connection to the engine; a message is one JSON line. Thread-safe; a lost engine only silences it."""

    def __init__(self, path: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(path)
        self._lock = threading.Lock()
        self.broken = False

    def send(self, msg: dict[str, Any]) -> None:
        if self.broken:
            return
        line = json.dumps(msg, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace") + b"\n"
        with self._lock:
            try:
                self._sock.sendall(line)
            except OSError:
                self.broken = True

    def close(self) -> None:
        with self._lock:
            self.broken = True
            try:
                self._sock.close()
            except OSError:
                pass


class SuitePlugin:
    """The hooks. `send` is the channel's; `options` the engine's JSON (see probes/pytest_run.py)."""

    def __init__(self, config: pytest.Config, send: Callable[[dict[str, Any]], None], options: dict[str, Any]) -> None:
        self.config = config
        self.send = send
        self.by_marker: dict[str, int] = {str(k): int(v) for k, v in dict(options.get("markers") or {}).items()}
        self.by_pattern: dict[str, int] = {str(k): int(v) for k, v in dict(options.get("patterns") or {}).items()}
        self.default = int(options.get("default_priority", 2))
        given = options.get("max_priority")
        self.max_priority = None if given is None else int(given)
        self.only = {str(i) for i in options.get("only") or []}  # probe ids (a rerun of one test, from the app)
        band = options.get("band")  # [lo, hi or None]: this run's share of a queue shared with probes
        self.band: tuple[int, int | None] | None = None if not band else (
            int(band[0]), None if band[1] is None else int(band[1]))
        self.longrepr_chars = int(options.get("longrepr_chars", 4000))
        self.limits = Limits(max_frames=int(options.get("max_frames", 500)),
                             frame_bytes=int(options.get("frame_bytes", 8192)))
        self.redactor = Redactor([os.environ.get(str(options.get("secret_env") or "JWT_SECRET_KEY"))])
        self.tests = RunningTests()
        self.worker: str | None = getattr(config, "workerinput", {}).get("workerid")
        self.relay = False  # an xdist controller: its workers report, it only relays
        self._uninstall: Callable[[], None] | None = None

    # --- session ------------------------------------------------------------------------------------------------
    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.relay = self.worker is None and self.config.pluginmanager.has_plugin("dsession")
        self.send({"type": "hello", "pid": os.getpid(), "worker": self.worker,
                   "role": "controller" if self.relay else ("worker" if self.worker else "main")})
        if not self.relay:
            self._uninstall = install(self.send, self.tests, self.redactor, self.limits)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, session: pytest.Session, config: pytest.Config,
                                      items: list[pytest.Item]) -> None:
        """After every other plugin (-k, -m): order what is left by priority, deselect beyond max_priority and,
        given `only`, every test whose probe id is not in it. In a queue shared with probes, one run takes one
        `band` of priorities; the tests of later bands are reported (`later`) so the queue shows them waiting."""
        ranked = [(self._priority(item), index, item) for index, item in enumerate(items)]
        ranked.sort(key=lambda r: (r[0], r[1]))
        wanted = [(self.max_priority is None or r[0] <= self.max_priority)
                  and (not self.only or probe_id(r[2].nodeid) in self.only) for r in ranked]
        lo, hi = self.band or (0, None)
        kept = [r for r, keep in zip(ranked, wanted) if keep and lo <= r[0] and (hi is None or r[0] <= hi)]
        later = [r for r, keep in zip(ranked, wanted) if keep and hi is not None and r[0] > hi]
        chosen = {id(r[2]) for r in kept}
        dropped = [r[2] for r in ranked if id(r[2]) not in chosen]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = [r[2] for r in kept]
        if not self.relay:
            self.send({"type": "collected", "deselected": len(dropped),
                       "items": [self._item(p, item) for p, _, item in kept],
                       "later": [self._item(p, item) for p, _, item in later]})

    @staticmethod
    def _item(priority: int, item: pytest.Item) -> dict[str, Any]:
        return {"nodeid": item.nodeid, "name": item.name, "priority": priority,
                "markers": sorted({m.name for m in item.iter_markers()})}

    def _priority(self, item: pytest.Item) -> int:
        names = [item.name, getattr(item, "originalname", item.name), Path(str(item.path)).name, item.nodeid]
        return priority_of(names, [m.name for m in item.iter_markers()], by_marker=self.by_marker,
                           by_pattern=self.by_pattern, default=self.default)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed and not self.relay:
            self.send({"type": "collect_error", "nodeid": report.nodeid or "(session)",
                       "longrepr": self._text(report.longreprtext)})

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.send({"type": "done", "exitstatus": int(exitstatus), "worker": self.worker})

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self._uninstall is not None:
            self._uninstall()
            self._uninstall = None

    # --- one test -----------------------------------------------------------------------------------------------
    def pytest_runtest_logstart(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        if not self.relay:
            self.tests.start(nodeid)
            self.send({"type": "start", "nodeid": nodeid})

    def _phase(self, item: pytest.Item, when: str) -> None:
        if not self.relay:
            self.tests.phase = when
            self.send({"type": "phase", "nodeid": item.nodeid, "when": when})

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        self._phase(item, "setup")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> None:
        self._phase(item, "call")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        self._phase(item, "teardown")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.relay:
            return
        wasxfail = getattr(report, "wasxfail", None)
        outcome: str = report.outcome
        if wasxfail is not None:
            outcome = "xfailed" if report.skipped else ("xpassed" if report.passed else outcome)
        elif report.failed and report.when != "call":
            outcome = "error"
        reason = str(wasxfail or "")
        if report.skipped and isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
            reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        crash = getattr(report.longrepr, "reprcrash", None)
        crash_line = ""
        if crash is not None:
            where = _test_line(report) or f"{Path(str(crash.path)).name}:{crash.lineno}"
            crash_line = f"{str(crash.message).splitlines()[0] if crash.message else ''} ({where})"
        self.send({"type": "report", "nodeid": report.nodeid, "when": report.when, "outcome": outcome,
                   "duration_ms": round(report.duration * 1000.0, 3), "reason": self._clean(reason)[:500],
                   "crash": self._clean(crash_line)[:500],
                   "longrepr": self._text(report.longreprtext) if report.failed else ""})

    def pytest_runtest_logfinish(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        if self.relay:
            return
        counts = self.tests.finish(nodeid)
        self.send({"type": "finish", "nodeid": nodeid, "frames_in": counts.frames_in,
                   "frames_out": counts.frames_out, "dropped": counts.dropped})

    def _clean(self, text: str) -> str:
        """A test's own text redacted: known secrets, and what a token it minted itself leaves in a traceback —
        pytest shortens long values in the middle ('eyJhbGciOi…nMi...MH0.<signature>'), which no longer reads
        as a JWT, so every fragment starting like one is hidden whole."""
        return scrub_jwt_fragments(self.redactor.text(text))

    def _text(self, text: str) -> str:
        """Failure text redacted and bounded: its end (where the error is) is what is kept."""
        text = self._clean(text)
        limit = self.longrepr_chars
        if len(text) <= limit:
            return text
        return f"…({len(text) - limit} characters cut)\n" + text[-limit:]


def _test_line(report: pytest.TestReport) -> str:
    """'test_x.py:42': the last line of the test's own file in the traceback (where the test was when it failed),
    rather than the library line that raised."""
    own = Path(str(report.location[0])).name
    entries = getattr(getattr(report.longrepr, "reprtraceback", None), "reprentries", None) or []
    for entry in reversed(entries):
        loc = getattr(entry, "reprfileloc", None)
        if loc is not None and Path(str(loc.path)).name == own:
            return f"{own}:{loc.lineno}"
    return ""


def pytest_configure(config: pytest.Config) -> None:
    path = os.environ.get(SOCKET_ENV)
    if not path:
        return  # loaded without stagewatch around it: nothing to report to
    try:
        options = json.loads(os.environ.get(OPTIONS_ENV) or "{}")
        channel = Channel(path)
    except (OSError, ValueError):
        return  # the engine is gone: run the suite as if we were not here
    plugin = SuitePlugin(config, channel.send, options if isinstance(options, dict) else {})
    config.pluginmanager.register(plugin, "stagewatch-suite")
    config.add_cleanup(channel.close)
