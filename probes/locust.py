"""Stagewatch as a Locust library: `StagewatchUser` runs one probe of the config as its task and reports every stage
to Locust as one request (`HTTP` for http/auth stages, `WS` for the WebSocket ones, named `probe/stage`), and the
close that matters as a `CLOSE` row named `probe/close CODE`.

Locust's workers are gevent (monkey-patched); the engine is asyncio. Each worker process runs ONE asyncio loop on
a native OS thread (`Engine`) with a native selector, so no probe ever blocks the gevent hub: a user greenlet hands
its probe to that loop and waits on a gevent `AsyncResult`, which the loop thread completes through the hub's
thread-safe callback (`loop.run_callback_threadsafe`). The run's events are collected on its bus in the loop thread
and fired as Locust events from the user's greenlet.

    from locust import constant
    from probes.locust import StagewatchUser

    class GoldenPath(StagewatchUser):
        probe = "golden-path"          # a probe id of the config
        wait_time = constant(1)
"""

from __future__ import annotations

try:
    import gevent  # type: ignore[import-untyped, unused-ignore]
    import locust
    from gevent.event import AsyncResult  # type: ignore[import-untyped, unused-ignore]
    from gevent.monkey import get_original  # type: ignore[import-untyped, unused-ignore]
    from locust.exception import StopUser
except ImportError as _missing:  # pragma: no cover - exercised by tests/test_locust.py in a subprocess
    raise ImportError("probes.locust needs Locust (and gevent): pip install 'stagewatch[locust]'") from _missing

import asyncio
import ipaddress
import logging
import os
import re
import selectors
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar, TypeVarTuple, Unpack
from urllib.parse import urlsplit

from .bus import EventBus
from .config import Config, ConfigError, ProbeDef, ResolvedTarget, find_config_path, load_config, resolve_target
from .events import Closed, Diagnosed, Event, ProbeFinished, RunStarted, StageFinished
from .handoff import read_handoff
from .net import is_loopback
from .options import RunOptions
from .runner import run_queue
from .safety import looks_like_production
from .sandbox import Sandbox, SandboxOptions
from .sanitize import one_line

__all__ = ["Engine", "ProbeReport", "StageFailure", "StagewatchUser", "StageReport", "locust_rows", "plan", "run_once"]

log = logging.getLogger(__name__)
for _chatty in ("httpx", "httpcore", "websockets"):  # a line per request at INFO would drown Locust's own output
    if logging.getLogger(_chatty).level == logging.NOTSET:
        logging.getLogger(_chatty).setLevel(logging.WARNING)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

HTTP_STEPS = frozenset({"http", "auth"})  # stages reported as request_type HTTP; every other step kind is WS
WAIT_MARGIN_S = 30.0  # the greenlet's backstop beyond the probe's own limits (each stage enforces its own)

# The real (unpatched) primitives: the engine's thread must be an OS thread with a native selector, and name lookups
# must not go through gevent's resolver from a thread whose hub never runs.
_start_thread: Callable[..., int] = get_original("_thread", "start_new_thread")
_Selector: type[selectors.BaseSelector] = get_original("selectors", "DefaultSelector")
_getaddrinfo: Callable[..., list[Any]] = get_original("socket", "getaddrinfo")


def _numeric(host: object) -> bool:
    """An IP literal (or none): resolving it never touches DNS, so it is done inline."""
    if host is None:
        return True
    text = host.decode() if isinstance(host, bytes) else str(host)
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


class _NativeLoop(asyncio.SelectorEventLoop):
    """A selector loop for a native thread in a gevent-patched process: its default executor is a native thread per
    call (the stdlib pool would start greenlets in a hub nobody runs) and it resolves names with the real resolver."""

    def run_in_executor(self, executor: Executor | None, func: Callable[[Unpack[Ts]], T],
                        *args: Unpack[Ts]) -> asyncio.Future[T]:
        if executor is not None:
            return super().run_in_executor(executor, func, *args)
        future: asyncio.Future[T] = self.create_future()

        def work() -> None:
            try:
                value = func(*args)
            except BaseException as exc:  # handed to the awaiting coroutine, as an executor would
                self.call_soon_threadsafe(_settle, future, None, exc)
            else:
                self.call_soon_threadsafe(_settle, future, value, None)

        _start_thread(work, ())
        return future

    async def getaddrinfo(self, host: bytes | str | None, port: bytes | str | int | None, *, family: int = 0,
                          type: int = 0, proto: int = 0, flags: int = 0) -> list[Any]:
        if _numeric(host):
            return _getaddrinfo(host, port, family, type, proto, flags)
        return await self.run_in_executor(None, _getaddrinfo, host, port, family, type, proto, flags)


def _settle(future: asyncio.Future[T], value: T | None, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)  # type: ignore[arg-type]


@dataclass(eq=False)
class _Call(Generic[T]):
    """One coroutine handed from a greenlet to the engine loop. Touched by the loop thread only (its greenlet
    learns the outcome through `result`, set in the hub's own thread)."""

    factory: Callable[[], Coroutine[Any, Any, T]]
    result: AsyncResult
    hub_loop: Any
    task: asyncio.Task[T] | None = None
    cancelled: bool = False


class Engine:
    """The process's asyncio loop on a native OS thread. `Engine.get()` starts it on first use (again after a fork:
    `locust --processes`); `run()` is called from greenlets and waits cooperatively."""

    _current: ClassVar[Engine | None] = None
    _starting = get_original("_thread", "allocate_lock")()

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = _NativeLoop(_Selector())
        self._sandboxes: dict[tuple[str, str], Awaitable[Sandbox]] = {}
        _start_thread(self._serve, ())

    @classmethod
    def get(cls) -> Engine:
        engine = cls._current
        if engine is None or engine.pid != os.getpid():
            with cls._starting:  # uncontended in practice: the first greenlet to ask starts it
                engine = cls._current
                if engine is None or engine.pid != os.getpid():
                    engine = cls._current = Engine()
        return engine

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, factory: Callable[[], Coroutine[Any, Any, T]], timeout: float | None = None) -> T:
        """Run `factory()` on the engine loop and return its result; the calling greenlet waits, every other one
        runs. A greenlet killed while waiting (a user stopped) cancels the coroutine. Raises TimeoutError past
        `timeout` (the coroutine is cancelled)."""
        call: _Call[T] = _Call(factory, AsyncResult(), gevent.get_hub().loop)
        self.loop.call_soon_threadsafe(self._start, call)
        try:
            ok, value = call.result.get(timeout=timeout)
        except gevent.Timeout:
            self.loop.call_soon_threadsafe(self._cancel, call)
            raise TimeoutError(f"no result from the engine within {timeout:g} s") from None
        except BaseException:  # GreenletExit: Locust stops this user
            self.loop.call_soon_threadsafe(self._cancel, call)
            raise
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def _start(self, call: _Call[T]) -> None:  # on the engine loop
        if call.cancelled:
            return
        call.task = self.loop.create_task(call.factory())
        call.task.add_done_callback(lambda task: self._done(call, task))

    def _cancel(self, call: _Call[T]) -> None:  # on the engine loop
        call.cancelled = True
        if call.task is not None:
            call.task.cancel()

    @staticmethod
    def _done(call: _Call[T], task: asyncio.Task[T]) -> None:  # on the engine loop
        if call.cancelled:
            return
        outcome: tuple[bool, Any]
        if task.cancelled():
            outcome = (False, asyncio.CancelledError())
        elif task.exception() is not None:
            outcome = (False, task.exception())
        else:
            outcome = (True, task.result())
        call.hub_loop.run_callback_threadsafe(call.result.set, outcome)  # set in the hub's thread

    async def sandbox(self, fault: str, ws_path: str) -> Sandbox:
        """One embedded sandbox per process (per fault), for a config whose target is the sandbox."""
        key = (fault, ws_path)
        if key not in self._sandboxes:
            self._sandboxes[key] = asyncio.ensure_future(Sandbox(SandboxOptions(fault=fault, ws_path=ws_path)).start())
        return await self._sandboxes[key]


# --- what a run reports -----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StageReport:
    name: str
    step: str
    status: str
    duration_ms: float
    detail: str
    ended: float  # wall-clock epoch seconds


@dataclass
class ProbeReport:
    """What one probe run told its bus, kept for Locust (frames and exchanges are not)."""

    probe_id: str
    status: str = "error"
    stages: list[StageReport] = field(default_factory=list)
    diagnoses: list[str] = field(default_factory=list)  # codes, first the probe's verdict
    closes: list[Closed] = field(default_factory=list)
    wall0: float = 0.0  # epoch seconds at the run's t == 0

    @property
    def close(self) -> Closed | None:
        """The close that matters, as the run model has it: the far side's, else our own."""
        return next((c for c in self.closes if c.by != "client"), self.closes[0] if self.closes else None)


class _Collector:
    """A bus listener (in the engine's thread): stage results, diagnoses, closes, the verdict."""

    def __init__(self, probe: ProbeDef) -> None:
        self.steps = {s.name: s.step for s in probe.steps}
        self.report = ProbeReport(probe.id)
        self.wall0 = self.report.wall0 = time.time()  # the run's t == 0 (RunStarted says exactly)

    def __call__(self, event: Event) -> None:
        if isinstance(event, StageFinished):
            self.report.stages.append(StageReport(event.stage, self.steps.get(event.stage, ""), event.status,
                                                  event.duration_ms, event.detail, self.wall0 + event.t))
        elif isinstance(event, Closed):
            self.report.closes.append(event)
        elif isinstance(event, Diagnosed):
            self.report.diagnoses = [str(d.get("code", "")) for d in event.diagnoses]
        elif isinstance(event, ProbeFinished):
            self.report.status = event.status
        elif isinstance(event, RunStarted):
            self.wall0 = self.report.wall0 = event.wall


# What varies from run to run in one failure's words: times ("53 ms"), counts ("144 pings", "3 of 5 sessions",
# "×6"); not codes and statuses, which are followed by their name ("1011 Internal Error", "HTTP 403 Forbidden").
_TIMING = re.compile(r"\d+(?:[.,]\d+)*(?= ?(?:ms|s|µs|%|B|KB|MB)\b)|\d+(?:[.,]\d+)*(?= [a-z])|(?<=×)\d+")


class StageFailure(Exception):
    """A stage that failed, as Locust's failure: the probe's diagnosis code, then the stage's detail (times and
    counts replaced by N, so the same failure groups into one row)."""


def failure_message(stage: StageReport, diagnoses: list[str]) -> str:
    detail = _TIMING.sub("N", one_line(stage.detail)) or stage.status
    return f"{diagnoses[0]}: {detail}" if diagnoses and diagnoses[0] else detail


@dataclass(frozen=True, slots=True)
class Row:
    """One Locust request event."""

    request_type: str
    name: str
    response_time: float  # ms
    start_time: float  # epoch seconds
    exception: StageFailure | None = None


def locust_rows(report: ProbeReport) -> list[Row]:
    """A probe run as Locust rows: each stage that ran (skipped ones are not requests), then the close by code."""
    rows: list[Row] = []
    for stage in report.stages:
        if stage.status == "skip":
            continue
        failure = StageFailure(failure_message(stage, report.diagnoses)) if stage.status in ("fail", "error") \
            else None
        rows.append(Row("HTTP" if stage.step in HTTP_STEPS else "WS", f"{report.probe_id}/{stage.name}",
                        stage.duration_ms, stage.ended - stage.duration_ms / 1000, failure))
    close = report.close
    if close is not None:  # its time: since the connection was accepted
        rows.append(Row("CLOSE", f"{report.probe_id}/close {close.code}", close.after_ms,
                        report.wall0 + close.t - close.after_ms / 1000))
    return rows


# --- the Locust user --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Plan:
    """A user class's probe, resolved once per process: config, target, the probe, its run options."""

    config: Config
    target: ResolvedTarget
    probe: ProbeDef
    options: RunOptions
    wait_s: float


_plans: dict[tuple[Any, ...], _Plan | ConfigError] = {}


def _expected_version(target: ResolvedTarget, given: str | None) -> str | None:
    """As the CLI: given, else the release build a standalone sandbox on this loopback port announced."""
    if given:
        return given
    parts = urlsplit(target.base_url)
    if not target.is_sandbox and is_loopback(parts.hostname) and parts.port:
        handoff = read_handoff(parts.port)
        if handoff and isinstance(handoff.get("release_build"), str):
            return str(handoff["release_build"])
    return None


def plan(config_path: str | None, target_name: str | None, host: str | None, probe_id: str,
         expected_version: str | None = None, allow_production: bool = False) -> _Plan:
    """Resolve what a user runs; raises ConfigError with one line for a person. Cached per process."""
    key = (config_path, target_name, host, probe_id, expected_version, allow_production)
    found = _plans.get(key)
    if found is None:
        try:
            found = _resolve(config_path, target_name, host, probe_id, expected_version, allow_production)
        except ConfigError as exc:
            found = exc
        _plans[key] = found
    if isinstance(found, ConfigError):
        raise found
    return found


def _resolve(config_path: str | None, target_name: str | None, host: str | None, probe_id: str,
             expected_version: str | None, allow_production: bool) -> _Plan:
    config = load_config(find_config_path(config_path))
    if target_name or not host:
        target = resolve_target(config, target_name)  # a named target (or the default one) as the config has it
    else:
        target = resolve_target(config, url=host.rstrip("/"))  # Locust's --host, as `stagewatch run --url`
    if not target.is_sandbox and not allow_production:
        where = urlsplit(target.base_url).hostname or ""
        if looks_like_production(where, config.safety.non_production_patterns):
            raise ConfigError(f"target {target.name!r} ({where}) looks like production; set allow_production = True "
                              "on the user class (or STAGEWATCH_ALLOW_PRODUCTION=1) if you mean to load it")
    probes = {p.id: p for p in config.probes if p.kind == "probe"}
    if probe_id not in probes:
        raise ConfigError(f"{config.source}: no probe named {probe_id!r} (probes: {', '.join(sorted(probes))})")
    probe = probes[probe_id]
    t = target.timeouts
    longest = max(t.http, t.connect, t.ready, t.agent, t.send, t.close, t.response)
    wait_s = sum((s.timeout or longest) for s in probe.steps) + longest + WAIT_MARGIN_S
    options = RunOptions(only=(probe_id,), expected_version=_expected_version(target, expected_version))
    return _Plan(config, target, probe, options, wait_s)


class StagewatchUser(locust.User):
    """A Locust user whose task is one run of a stagewatch probe; subclass it in a locustfile.

    Attributes (class level): `probe` the probe id (default golden-path); `config` a config path (default
    $STAGEWATCH_CONFIG, ./config.yaml, then the packaged one); `target` a target of the config (default: Locust's
    host, probed as `stagewatch run --url HOST` does; with neither, the config's default target, whose embedded
    sandbox is started once per worker process); `expected_version`; `allow_production`.
    """

    abstract = True
    probe: str = "golden-path"
    config: str | None = None
    target: str | None = None
    expected_version: str | None = None
    allow_production: bool = False

    def _plan(self) -> _Plan:
        allow = self.allow_production or os.environ.get("STAGEWATCH_ALLOW_PRODUCTION", "") in ("1", "true", "yes")
        return plan(self.config, self.target, self.host, self.probe,
                    self.expected_version or os.environ.get("STAGEWATCH_EXPECT_VERSION") or None, allow)

    @locust.task
    def run_probe(self) -> None:
        try:
            p = self._plan()
        except ConfigError as exc:
            self.environment.events.request.fire(
                request_type="CONFIG", name=self.probe, response_time=0, response_length=0, response=None,
                context={}, exception=exc)
            log.error("stagewatch: %s", one_line(str(exc)))
            raise StopUser() from None
        self.report(run_once(p))

    def report(self, report: ProbeReport) -> None:
        """Fire the run's rows as Locust request events (in this greenlet)."""
        fire = self.environment.events.request.fire
        for row in locust_rows(report):
            fire(request_type=row.request_type, name=row.name, response_time=row.response_time, response_length=0,
                 response=None, context={"probe": report.probe_id, "status": report.status},
                 exception=row.exception, start_time=row.start_time, url=None)


def run_once(p: _Plan) -> ProbeReport:
    """One run of the plan's probe on the process's engine; the calling greenlet waits cooperatively."""
    engine = Engine.get()

    async def once() -> ProbeReport:
        options = p.options
        if p.target.is_sandbox:
            options = RunOptions(only=options.only, expected_version=options.expected_version,
                                 sandbox=await engine.sandbox("none", p.target.protocol.ws_path))
        collector = _Collector(p.probe)
        bus = EventBus()
        bus.subscribe(collector)
        await run_queue(p.config, p.target, bus, options)
        return collector.report

    return engine.run(once, timeout=p.wait_s)



# Importing the engine can take seconds on a loaded machine. gevent's loop caches its clock, and Locust schedules its
# --run-time limit right after loading the locustfile, from that stale clock: a limit shorter than the import would
# fire at once. Refreshing the clock here keeps `-t` honest.
gevent.get_hub().loop.update_now()
