"""The queue runner: probes in priority order (P0 first), fail-fast, filters, one connection per probe.

`run_queue()` is the engine's entry point for every front end: it starts the embedded sandbox when the target
asks for it (or uses the one `shared_sandbox()` keeps for a watch's rounds), publishes RunStarted … RunFinished
on the bus, and returns the probes' final results.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import httpx

from .bus import EventBus
from .clock import Clock
from .config import Config, ProbeDef, ResolvedTarget
from .context import RunContext
from .diagnosis import diagnose
from .events import (Diagnosed, ProbeFinished, ProbeStarted, RunFinished, RunStarted, StageFinished,
                     StageStarted)
from .net import is_loopback
from .options import RunOptions, RunResult, run_fault, run_redactor, sandbox_options, shared_sandbox
from .probe import ProbeRun
from .pytest_run import Suite
from .sandbox import Sandbox
from .watch import UNREACHABLE

__all__ = ["Clock", "RunOptions", "RunResult", "run_queue", "sandbox_options", "select_probes", "shared_sandbox"]

Band = tuple[int, int | None]  # a pytest entry's share of the queue: its tests of priority lo..hi (None: no end)


def select_probes(config: Config, options: RunOptions) -> list[ProbeDef]:
    """The queue: filtered by --only / --max-priority, stable-sorted by priority. An entry of kind pytest stays
    while `only` names something that is not a probe (one of its tests, known once collected)."""
    probes = list(config.probes)
    if options.holds != "with":  # a watch: its rounds run without the held sessions, which run beside them
        holding = options.holds == "only"
        probes = [p for p in probes if any(s.step == "hold" for s in p.steps) == holding]
    if options.only:  # (known in the whole config: a watch's held probes and its rounds share one --only)
        known = {p.id for p in config.probes if p.kind == "probe"}
        unknown = [i for i in options.only if i not in known]
        suites = [p for p in probes if p.kind == "pytest"]
        if unknown and not suites:
            raise ValueError(f"--only: no probe named {unknown[0]!r} (probes: {', '.join(sorted(known))})")
        probes = [p for p in probes if p.id in options.only or (p.kind == "pytest" and unknown)]
    if options.max_priority is not None:
        probes = [p for p in probes if p.kind == "pytest" or p.priority <= options.max_priority]
    return sorted(probes, key=lambda p: p.priority)


def plan(probes: list[ProbeDef]) -> list[tuple[ProbeDef, Band | None]]:
    """The order of the queue with its pytest entries cut into priority bands around the probes' priorities, so
    tests and probes go P0 first together: for probes at P0 and P2, a suite runs its tests of P0..P1 after the P0
    probes (its tests with a probe's priority run after that probe) and its P2 and later after the P2 probes."""
    levels = sorted({p.priority for p in probes if p.kind == "probe"})
    suites = [p for p in probes if p.kind == "pytest"]
    steps: list[tuple[ProbeDef, Band | None]] = []
    lo = 0
    for level in levels:
        steps += [(s, (lo, level - 1)) for s in suites]
        steps += [(p, None) for p in probes if p.kind == "probe" and p.priority == level]
        lo = level
    steps += [(s, (lo, None)) for s in suites]
    return steps


def target_hosts(target: ResolvedTarget, base_url: str) -> frozenset[str]:
    """The hosts probes may contact: base and ws hosts and allowed_hosts. An auth endpoint is not added: config
    validation requires it to be on one of these, and the engine checks again before sending credentials."""
    hosts = {urlsplit(base_url).hostname or ""}
    if target.ws_url:
        hosts.add(urlsplit(target.ws_url).hostname or "")
    hosts.update(h.lower() for h in target.allowed_hosts)
    return frozenset(h.lower() for h in hosts if h)


@functools.lru_cache(maxsize=8)
def tls_context(verify: bool, trust_env: bool, cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    """The runs' TLS context, built once: loading the CA bundle costs ~16 ms of CPU per client, more than the rest of
    a probe against a nearby server (a load test runs thousands). Keyed by what httpx reads to build it."""
    return httpx.create_ssl_context(verify=verify, trust_env=trust_env)


@asynccontextmanager
async def run_context(config: Config, target: ResolvedTarget, bus: EventBus, options: RunOptions,
                      clock: Clock) -> AsyncIterator[tuple[RunContext, str | None]]:
    """What the probes of one run share: the base URL (the embedded sandbox's, started here unless
    `options.sandbox` is given, and stopped at exit), the redactor, one HTTP client, the allowed hosts. Yields it
    with the sandbox's secret (None for any other target)."""
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
    loopback = is_loopback(urlsplit(base_url).hostname)
    try:
        # No keep-alive: each probe measures its own connection, and a server closing an idle one between probes
        # (as restarting ones do) must not fail the next probe with "disconnected without sending a response".
        tls = tls_context(target.verify_tls, not loopback, os.environ.get("SSL_CERT_FILE"),
                          os.environ.get("SSL_CERT_DIR"))
        async with httpx.AsyncClient(verify=tls, follow_redirects=False, trust_env=not loopback,
                                     limits=httpx.Limits(max_keepalive_connections=0)) as http:
            yield RunContext(target=target, base_url=base_url, bus=bus, clock=clock,
                             redactor=run_redactor(target, env, secret), env=env, expected_version=expected,
                             sandbox_secret=secret, http=http, allowed_hosts=target_hosts(target, base_url),
                             degraded_ms=config.watch.degraded_ms, trace=options.trace), secret
    finally:
        if owned is not None:
            await owned.stop()


async def run_beside(config: Config, target: ResolvedTarget, bus: EventBus, options: RunOptions,
                     clock: Clock) -> list[ProbeFinished]:
    """A watch's held sessions: the probes with a `hold` step, run once beside the rounds (each for its own
    `for`), without a run of their own; their session changes reach the watch's timeline."""
    holds = [p for p in select_probes(config, dataclasses.replace(options, holds="only"))]
    if not holds:
        return []
    async with run_context(config, target, bus, options, clock) as (ctx, _secret):
        done = await asyncio.gather(*(_run_probe(p, ctx, ctx.expected_version) for p in holds))
    return [finished for finished, _ in done]


async def run_queue(config: Config, target: ResolvedTarget, bus: EventBus, options: RunOptions | None = None,
                    clock: Clock | None = None) -> RunResult:
    options = options or RunOptions()
    clock = clock or Clock()
    probes = select_probes(config, options)
    started = time.monotonic()
    steps = plan(probes)
    suites: dict[str, Suite] = {}
    results: list[ProbeFinished] = []
    verdict = "pass"
    base_url = target.base_url
    try:
        async with run_context(config, target, bus, options, clock) as (ctx, secret):
            base_url, expected, redactor = ctx.base_url, ctx.expected_version, ctx.redactor
            bus.publish(RunStarted(clock(), target.name, base_url,
                                   tuple((p.id, p.name or p.id, p.priority) for p in probes if p.kind == "probe"),
                                   clock.wall, run_fault(target, options)))
            stop = False
            unreachable: str | None = None  # why nothing answered: later probes are not attempted
            known = {p.id for p in probes if p.kind == "probe"}
            suite_only = tuple(i for i in options.only if i not in known)  # a rerun of one of a suite's tests
            while steps:
                probe, band = steps.pop(0)
                why = ("not run: --fail-fast" if stop else None if unreachable is None
                       else f"not attempted: target unreachable ({unreachable})")
                if band is not None:
                    suite = suites.get(probe.id)
                    if suite is None:
                        suite = suites[probe.id] = Suite(
                            config, target, bus, clock, dataclasses.replace(options, only=suite_only), probe.args,
                            base_url, secret, redactor, embedded=True, name=probe.name or probe.id)
                    if why is None and suite.wants(*band):
                        before = len(suite.results)
                        await suite.run(band)
                        new = suite.results[before:]
                        results += new
                        if any(f.status in ("fail", "error") for f in new) or suite.broken:
                            verdict = "fail"
                            stop = options.fail_fast
                    if not any(p.id == probe.id for p, _ in steps):  # its last band: the entry is over
                        before = len(suite.results)
                        suite.finish(why or "not run: no band of the queue took it")
                        results += suite.results[before:]
                    continue
                if why is not None:
                    results.append(_skip(bus, clock, probe, why, unreachable=unreachable is not None and not stop))
                    continue
                finished, unreachable = await _run_probe(probe, ctx, expected)
                results.append(finished)
                if finished.status != "pass":
                    verdict = "fail"
                    stop = options.fail_fast
    except asyncio.CancelledError:
        for probe, band in steps:  # the probes the interrupt kept from running are reported as not run
            if band is None:
                results.append(_skip(bus, clock, probe, "not run: the run was interrupted"))
        for suite in suites.values():
            suite.fold.end_waiting("not run: the run was interrupted")
        bus.publish(RunFinished(clock(), "interrupted", round((time.monotonic() - started) * 1000, 1)))
        raise
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
