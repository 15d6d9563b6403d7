"""What every stagewatch command shares: the one-line user error (`fail`, exit 2), loading the config and
picking the target, and the click options for where to probe, how to run the queue and what to report.

Each command module (`tui/cli.py` and the `tui/cli_*.py` beside it) builds on these, so an option means the same
in every command and a command can refuse the ones it cannot honour.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import click

from probes.config import Config, ConfigError, ResolvedTarget, find_config_path, load_config, resolve_target
from probes.handoff import read_handoff
from probes.headless import EXIT_USAGE
from probes.net import is_loopback
from probes.options import RunOptions
from probes.recording import default_recording_path
from probes.safety import looks_like_production
from probes.sanitize import one_line
from probes.sandbox import FAULTS
from probes.durations import parse_duration

FAULT_CHOICE = click.Choice(list(FAULTS))


class _Duration(click.ParamType):
    """10s, 500ms, 2m, 1h; a bare number is seconds."""
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = _Duration()


def fail(message: str) -> NoReturn:
    click.echo(f"stagewatch: error: {one_line(message)}", err=True)  # may quote a config or a server
    sys.exit(EXIT_USAGE)


def load(path: str | None) -> Config:
    try:
        return load_config(find_config_path(path))
    except ConfigError as exc:
        fail(str(exc))


def pick_target(config: Config, name: str | None, url: str | None, *, allow_production: bool,
            insecure: bool) -> ResolvedTarget:
    if name and url:
        fail("give --target or --url, not both")
    try:
        target = resolve_target(config, name, url=url)
    except ConfigError as exc:
        fail(str(exc))
    if insecure:
        target = target.model_copy(update={"verify_tls": False})
    if not target.is_sandbox:
        host = urlsplit(target.base_url).hostname or ""
        if looks_like_production(host, config.safety.non_production_patterns) and not allow_production:
            fail(f"target {target.name!r} ({host}) looks like production (no "
                 f"{'/'.join(config.safety.non_production_patterns[:3])}… in the host); "
                 "pass --allow-production if you mean it")
    return target


def expected_version(target: ResolvedTarget, given: str | None) -> str | None:
    if given:
        return given
    parts = urlsplit(target.base_url)
    if not target.is_sandbox and is_loopback(parts.hostname) and parts.port:
        handoff = read_handoff(parts.port)  # a standalone sandbox says which build it released
        if handoff and isinstance(handoff.get("release_build"), str):
            return handoff["release_build"]
    return None


def check_credentials(config: Config, target: ResolvedTarget, options: RunOptions) -> None:
    """A missing secret/token variable is a configuration error (exit 2), not a probe failure to diagnose."""
    from probes.auth import credentials_problem
    from probes.runner import select_probes

    if target.is_sandbox:
        return  # the embedded sandbox brings its own key
    needs_token = any(s.step == "auth" or (s.step == "connect" and s.token == "default")
                      for p in select_probes(config, options) for s in p.steps)
    parts = urlsplit(target.base_url)
    loopback = parts.port if is_loopback(parts.hostname) else None
    problem = credentials_problem(target.auth, os.environ, loopback_port=loopback) if needs_token else None
    if problem:
        fail(f"target {target.name!r}: {problem}; export it, or set auth.mode in the config")


_WHERE = [
    click.option("--config", "config_path", metavar="PATH", help="Config file (default: $STAGEWATCH_CONFIG, "
                 "./config.yaml, then the packaged one)."),
    click.option("--target", "-t", metavar="NAME", help="Target from the config (default: default_target)."),
    click.option("--url", metavar="BASE_URL", help="Probe any server at this base URL with the default "
                 "protocol (ws URL derived from it)."),
]
_ALLOW_PRODUCTION = click.option("--allow-production", is_flag=True,
                                 help="Allow a target whose host looks like production.")


def where_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Which target: for commands that do not run the queue (repro), so options they cannot honour are refused."""
    for option in reversed([*_WHERE, _ALLOW_PRODUCTION]):
        func = option(func)
    return func


def target_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed([
        *_WHERE,
        click.option("--fault", type=FAULT_CHOICE, default="none", show_default=True,
                     help="Fault for the embedded sandbox target."),
        click.option("--expect-version", metavar="BUILD", help="Fail health when the deployed build differs."),
        click.option("--fail-fast", is_flag=True, help="Stop the queue at the first failing probe."),
        click.option("--only", multiple=True, metavar="ID", help="Run only this probe (repeatable)."),
        click.option("--max-priority", type=click.IntRange(0, 9), metavar="N", help="Run probes P0..PN only."),
        click.option("--insecure", is_flag=True, help="Do not verify TLS certificates."),
        _ALLOW_PRODUCTION,
    ]):
        func = option(func)
    return func


def report_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """What a headless run writes and says: reports, the recording, how much it prints."""
    for option in reversed([
        click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="Write the JSON report."),
        click.option("--junit", "junit_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="Write JUnit XML."),
        click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="Write a Markdown report to paste into an issue."),
        click.option("--record", "record_path", metavar="PATH",
                     help="Record the session here (default: user data dir)."),
        click.option("--no-record", is_flag=True, help="Do not record the session."),
        click.option("--verbose", "-v", is_flag=True, help="Also print skipped stages and diagnosis evidence."),
        click.option("--quiet", "-q", is_flag=True, help="Print nothing; rely on the exit code and reports."),
    ]):
        func = option(func)
    return func


def telemetry_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Where a headless run reports to while it runs: traces over OTLP, metrics for Prometheus to scrape."""
    for option in reversed([
        click.option("--otlp", "otlp", metavar="[ENDPOINT]", is_flag=False, flag_value="", default=None,
                     help="Export a trace per probe (a span per stage) over OTLP/HTTP to ENDPOINT (alone: "
                     "$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, $OTEL_EXPORTER_OTLP_ENDPOINT or localhost:4318), and "
                     "send traceparent on the probes' requests. Those variables alone turn it on too."),
        click.option("--metrics-port", type=click.IntRange(0, 65535), metavar="N",
                     help="Serve Prometheus metrics on /metrics at this port while the run lasts (0: any free "
                     "port, said on stderr)."),
        click.option("--metrics-host", metavar="HOST", default=None,
                     help="Address for --metrics-port (default 127.0.0.1)."),
    ]):
        func = option(func)
    return func


EXTRA_LINE = "stagewatch: {flag} needs the {extra} extra: pip install 'stagewatch[{extra}]'"


def _needs(flag: str, extra: str, *modules: str) -> bool:
    """Whether the extra's packages import; without them, the one line saying how to get them (exit 2)."""
    import importlib

    try:
        for module in modules:
            importlib.import_module(module)
    except ImportError:
        click.echo(EXTRA_LINE.format(flag=flag, extra=extra), err=True)
        sys.exit(EXIT_USAGE)
    return True


def telemetry(otlp: str | None, metrics_port: int | None, metrics_host: str | None) -> tuple[str | None, int | None,
                                                                                            str]:
    """(the traces endpoint or None, the metrics port or None, its host), the extras checked: a flag whose
    packages are missing is a usage error with one line; the OTEL_EXPORTER_OTLP_* variables alone turn tracing
    on when the packages are there (and only warn when they are not)."""
    from probes.tracecontext import endpoint_from_env, resolve_endpoint

    if metrics_host is not None and metrics_port is None:
        fail("--metrics-host goes with --metrics-port")
    if metrics_port is not None:
        _needs("--metrics-port", "metrics", "prometheus_client", "probes.metrics")
    endpoint: str | None = None
    if otlp is not None:
        _needs("--otlp", "otel", "probes.otel", "opentelemetry.exporter.otlp.proto.http.trace_exporter")
        try:
            endpoint = resolve_endpoint(otlp or None, os.environ)
        except ValueError as exc:
            fail(str(exc))
    elif endpoint_from_env(os.environ):
        try:
            import probes.otel  # noqa: F401
            import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
        except ImportError:
            click.echo("stagewatch: warning: OTEL_EXPORTER_OTLP_*ENDPOINT is set, but traces need the otel extra "
                       "(pip install 'stagewatch[otel]'): not exporting", err=True)
        else:
            try:
                endpoint = resolve_endpoint(None, os.environ)
            except ValueError as exc:
                fail(str(exc))
    return endpoint, metrics_port, metrics_host or "127.0.0.1"


def prepare(config_path: str | None, target: str | None, url: str | None, fault: str, expect_version: str | None,
             fail_fast: bool, only: tuple[str, ...], max_priority: int | None, insecure: bool,
             allow_production: bool) -> tuple[Config, ResolvedTarget, RunOptions]:
    config = load(config_path)
    resolved = pick_target(config, target, url, allow_production=allow_production, insecure=insecure)
    if fault != "none" and not resolved.is_sandbox:
        fail("--fault applies to the embedded sandbox only; for a standalone one use `stagewatch sandbox --fault`")
    known = {p.id for p in config.probes if p.kind == "probe"}
    suites = [p.id for p in config.probes if p.kind == "pytest"]
    for probe_id in only:
        if probe_id not in known and not suites:  # with a suite in the queue, it may name one of its tests
            fail(f"--only: no probe named {probe_id!r} (probes: {', '.join(sorted(known))})")
    options = RunOptions(fail_fast=fail_fast, only=only, max_priority=max_priority,
                         expected_version=expected_version(resolved, expect_version), fault=fault)
    return config, resolved, options




def record_path_for(record_path: str | None, no_record: bool, target: str, config: Config) -> Path | None:
    """Where to record: the path named with --record, or a new file in the default folder, which is pruned first
    (config.recording: keep_files, keep_days; a named path and its folder are never pruned)."""
    if no_record:
        return None
    if record_path:
        return Path(record_path)
    from probes.retention import prune_recordings

    path = default_recording_path(target)
    prune_recordings(path.parent, config.recording.keep_files, config.recording.keep_days)
    return path
