"""The queue runner: probes in priority order (P0 first), fail-fast, filters, one connection per probe.

`run_queue()` is the engine's entry point for every front end: it starts the embedded sandbox when the target
asks for it (or uses the one `shared_sandbox()` keeps for a watch's rounds), publishes RunStarted … RunFinished
on the bus, and returns the probes' final results.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from .bus import EventBus
from .clock import Clock
from .config import CREDENTIAL_HEADERS, Config, ProbeDef, ResolvedTarget
from .context import RunContext
from .diagnosis import diagnose
from .events import (Diagnosed, ProbeFinished, ProbeStarted, RunFinished, RunStarted, StageFinished,
                     StageStarted)
from .net import is_loopback
from .probe import ProbeRun
from .redact import Redactor
from .watch import UNREACHABLE
from .sandbox import Sandbox, SandboxOptions


@dataclass
class RunOptions:
    fail_fast: bool = False
    only: tuple[str, ...] = ()
    max_priority: int | None = None
    expected_version: str | None = None
    fault: str = "none"  # for the embedded sandbox
    sandbox_options: SandboxOptions | None = None
    env: Mapping[str, str] | None = None
    sandbox: Sandbox | None = None  # a running sandbox for a sandbox target: used, never started or stopped here


@dataclass
class RunResult:
    verdict: str
    probes: list[ProbeFinished] = field(default_factory=list)
    base_url: str = ""


def sandbox_options(target: ResolvedTarget, options: RunOptions) -> SandboxOptions:
    """The embedded sandbox's options: as given, or the run's fault on the target's WebSocket path."""
    return options.sandbox_options or SandboxOptions(fault=options.fault, ws_path=target.protocol.ws_path)


@asynccontextmanager
async def shared_sandbox(target: ResolvedTarget, options: RunOptions) -> AsyncIterator[RunOptions]:
    """For many rounds (a watch) against a sandbox target: ONE sandbox for all of them (a deploy it plays goes on
    across rounds). Yields `options` with `.sandbox` set, and stops that sandbox at exit; for any other target,
    or when `options.sandbox` is already set, yields `options` unchanged."""
    if not target.is_sandbox or options.sandbox is not None:
        yield options
        return
    sandbox = await Sandbox(sandbox_options(target, options)).start()
    try:
        yield dataclasses.replace(options, sandbox=sandbox)
    finally:
        await sandbox.stop()


def select_probes(config: Config, options: RunOptions) -> list[ProbeDef]:
    """The queue: filtered by --only / --max-priority, stable-sorted by priority."""
    probes = list(config.probes)
    if options.only:
        known = {p.id for p in probes}
        unknown = [i for i in options.only if i not in known]
        if unknown:
            raise ValueError(f"--only: no probe named {unknown[0]!r} (probes: {', '.join(sorted(known))})")
        probes = [p for p in probes if p.id in options.only]
    if options.max_priority is not None:
        probes = [p for p in probes if p.priority <= options.max_priority]
    return sorted(probes, key=lambda p: p.priority)


def target_hosts(target: ResolvedTarget, base_url: str) -> frozenset[str]:
    """The hosts probes may contact: base and ws hosts and allowed_hosts. An auth endpoint is not added: config
    validation requires it to be on one of these, and the engine checks again before sending credentials."""
    hosts = {urlsplit(base_url).hostname or ""}
    if target.ws_url:
        hosts.add(urlsplit(target.ws_url).hostname or "")
    hosts.update(h.lower() for h in target.allowed_hosts)
    return frozenset(h.lower() for h in hosts if h)


async def run_queue(config: Config, target: ResolvedTarget, bus: EventBus, options: RunOptions | None = None,
                    clock: Clock | None = None) -> RunResult:
    options = options or RunOptions()
    clock = clock or Clock()
    probes = select_probes(config, options)
    owned: Sandbox | None = None  # a sandbox this call starts, and so stops
    expected = options.expected_version or None
    base_url = target.base_url
    secret: str | None = None
    if target.is_sandbox:
        sandbox = options.sandbox
        if sandbox is None:
            sandbox = owned = await Sandbox(sandbox_options(target, options)).start()
        base_url, secret = sandbox.base_url, sandbox.secret
        expected = expected or sandbox.release_build  # none while it plays a deploy: builds change by design
    env = os.environ if options.env is None else options.env
    redactor = Redactor([secret] if secret else [])
    redactor.add(env.get(target.auth.secret_env))
    redactor.add(env.get(target.auth.token_env))
    for name, value in target.protocol.headers.items():  # credentials the config sends as headers (${VAR}s)
        if name.lower() in CREDENTIAL_HEADERS:
            redactor.add(value)
            redactor.add(value.partition(" ")[2])  # "Bearer <credential>": the credential alone, too
    started = time.monotonic()
    queue: asyncio.PriorityQueue[tuple[int, int, ProbeDef]] = asyncio.PriorityQueue()
    for index, probe in enumerate(probes):
        queue.put_nowait((probe.priority, index, probe))
    results: list[ProbeFinished] = []
    verdict = "pass"
    verify: bool = target.verify_tls
    loopback = is_loopback(urlsplit(base_url).hostname)
    try:
        # No keep-alive: each probe measures its own connection, and a server closing an idle one between probes
        # (as restarting ones do) must not fail the next probe with "disconnected without sending a response".
        async with httpx.AsyncClient(verify=verify, follow_redirects=False, trust_env=not loopback,
                                     limits=httpx.Limits(max_keepalive_connections=0)) as http:
            ctx = RunContext(target=target, base_url=base_url, bus=bus, clock=clock, redactor=redactor, env=env,
                             expected_version=expected, sandbox_secret=secret, http=http,
                             allowed_hosts=target_hosts(target, base_url), degraded_ms=config.watch.degraded_ms)
            bus.publish(RunStarted(clock(), target.name, base_url,
                                   tuple((p.id, p.name or p.id, p.priority) for p in probes), clock.wall))
            stop = False
            unreachable: str | None = None  # why nothing answered: later probes are not attempted
            while not queue.empty():
                _, _, probe = queue.get_nowait()
                if stop:
                    results.append(_skip(bus, clock, probe, "not run: --fail-fast"))
                    continue
                if unreachable is not None:
                    results.append(_skip(bus, clock, probe, f"not attempted: target unreachable ({unreachable})",
                                         unreachable=True))
                    continue
                finished, unreachable = await _run_probe(probe, ctx, expected)
                results.append(finished)
                if finished.status != "pass":
                    verdict = "fail"
                    stop = options.fail_fast
    except asyncio.CancelledError:
        while not queue.empty():  # the probes the interrupt kept from running are reported as not run
            results.append(_skip(bus, clock, queue.get_nowait()[2], "not run: the run was interrupted"))
        bus.publish(RunFinished(clock(), "interrupted", round((time.monotonic() - started) * 1000, 1)))
        raise
    finally:
        if owned is not None:
            await owned.stop()
    bus.publish(RunFinished(clock(), verdict, round((time.monotonic() - started) * 1000, 1)))  # type: ignore[arg-type]
    return RunResult(verdict, results, base_url)


async def _run_probe(probe: ProbeDef, ctx: RunContext, expected: str | None) -> tuple[ProbeFinished, str | None]:
    """One probe, then its diagnosis, then its end: every consumer learns how it ended, even when interrupted.
    Also says why the target is unreachable, when nothing answered (DNS, refused, reset)."""
    bus, clock = ctx.bus, ctx.clock
    run = ProbeRun(probe, ctx)
    start = time.monotonic()
    try:
        outcome = await run.run()
    except asyncio.CancelledError:  # Ctrl-C, a rerun, quitting: the probe ends as an error at its stage
        m = run.model
        bus.publish(ProbeFinished(clock(), probe.id, "error", round((time.monotonic() - start) * 1000, 1),
                                  run.current, m.frames_in, m.frames_out))
        raise
    m = outcome.model
    found = diagnose(m, expected_version=expected, protocol=ctx.target.protocol, timeouts=ctx.target.timeouts)
    if found:
        bus.publish(Diagnosed(clock(), probe.id, tuple(d.as_dict() for d in found)))
    finished = ProbeFinished(clock(), probe.id, outcome.status, outcome.duration_ms, outcome.failed_stage,
                             m.frames_in, m.frames_out)
    bus.publish(finished)
    failed = m.failed
    unreachable = None
    if failed is not None and any(d.code == "dns-or-refused" for d in found):
        unreachable = f"{failed.name}: {failed.detail}"
    return finished, unreachable


def _skip(bus: EventBus, clock: Clock, probe: ProbeDef, why: str, unreachable: bool = False) -> ProbeFinished:
    bus.publish(ProbeStarted(clock(), probe.id, probe.name or probe.id, probe.priority,
                             tuple(s.name for s in probe.steps)))
    for s in probe.steps:
        bus.publish(StageStarted(clock(), probe.id, s.name, s.step))
        bus.publish(StageFinished(clock(), probe.id, s.name, "skip", 0.0, why))
    if unreachable:  # named, so no later rule (secret-missing, …) explains a probe that never ran
        bus.publish(Diagnosed(clock(), probe.id, ({
            "code": UNREACHABLE, "summary": "not attempted: the target is unreachable (nothing answered an earlier "
            "probe)", "evidence": [why], "next_step": "wait for the service to come back, or check the URL and "
            "port; this probe runs again next round"},)))
    finished = ProbeFinished(clock(), probe.id, "skip", 0.0, None, 0, 0)
    bus.publish(finished)
    return finished
