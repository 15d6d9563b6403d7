"""What one run of the queue is asked to do (`RunOptions`), what it returns (`RunResult`), and the embedded
sandbox a run or a watch's rounds use (`sandbox_options`, `shared_sandbox`).

Held below both runners (`probes.runner` for the queue, `probes.pytest_run` for a pytest suite) so that the queue
can run a suite as one of its entries without either importing the other's caller.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from .config import CREDENTIAL_HEADERS, ResolvedTarget
from .events import ProbeFinished
from .redact import Redactor
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
    holds: str = "with"  # probes with a hold step: with the others, "without" them (a watch's rounds), "only" them
    trace: bool = False  # name a W3C trace per probe and a span per stage, and send `traceparent` (probes.otel)


@dataclass
class RunResult:
    verdict: str
    probes: list[ProbeFinished] = field(default_factory=list)
    base_url: str = ""


def run_redactor(target: ResolvedTarget, env: Mapping[str, str], secret: str | None) -> Redactor:
    """Every secret a run knows, hidden wherever it would appear: the sandbox's key, the target's secret and token
    variables, and credentials the config sends as headers (`${VAR}`s), whole and without their scheme."""
    redactor = Redactor([secret] if secret else [])
    redactor.add(env.get(target.auth.secret_env))
    redactor.add(env.get(target.auth.token_env))
    for name, value in target.protocol.headers.items():
        if name.lower() in CREDENTIAL_HEADERS:
            redactor.add(value)
            redactor.add(value.partition(" ")[2])  # "Bearer <credential>": the credential alone, too
    return redactor


def run_fault(target: ResolvedTarget, options: RunOptions) -> str:
    """The fault the embedded sandbox plays in this run ("none" for any other target), for RunStarted."""
    if not target.is_sandbox:
        return "none"
    if options.sandbox is not None:
        return options.sandbox.fault
    return sandbox_options(target, options).fault


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
