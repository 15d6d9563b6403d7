"""The `stagewatch` command line: the live app (default), `run` (headless, for CI; `run --pytest` runs your own
pytest suite as the queue), `pytest`, `sandbox`, `demo`, `replay`.

User errors (bad config, unknown target, unreachable file) print one line on stderr and exit 2; no traceback.
The Textual app is imported only by the commands that open it, so `stagewatch run` starts fast.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import click

from probes.config import SANDBOX, Config, ResolvedTarget
from probes.headless import HeadlessRequest, run_headless
from probes.options import RunOptions
from probes.net import is_loopback
from probes.sandbox import DeployStep, parse_deploy
from probes.sanitize import one_line
from probes.telemetry import Telemetry
from tui.cli_common import (DURATION, record_path_for, FAULT_CHOICE, check_credentials, fail, load, pick_target, prepare,
                            report_options, target_options, telemetry, telemetry_options)

WATCH_DEFAULT = 0.0  # `--watch` without a value: the config's watch.interval_s
MIN_WATCH_S = 0.1
DEMO_WATCH_S = 2.0  # `demo --deploy` watches this often unless --watch says otherwise


def _watch_interval(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """--watch DURATION ('10s', '1m', '500ms'; a bare number is seconds) -> seconds; a bad one is a usage error."""
    from probes.durations import parse_duration

    if value is None:
        return None
    if value == "":
        return WATCH_DEFAULT
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(one_line(str(exc)), ctx=ctx, param=param) from None
    if seconds < MIN_WATCH_S:
        raise click.BadParameter(f"{one_line(value)!r} is too short: at least {MIN_WATCH_S * 1000:.0f} ms between "
                                 "rounds", ctx=ctx, param=param)
    return seconds


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@target_options
@click.option("--record", "record_path", metavar="PATH", help="Record the session here (default: user data dir).")
@click.option("--no-record", is_flag=True, help="Do not record the session.")
@click.option("--watch", "watch", metavar="DURATION", is_flag=False, flag_value="", default=None,
              callback=_watch_interval, help="Watch from the start: the queue in rounds every DURATION (10s, 1m, "
              "500ms; alone: the config's watch.interval_s). In the app, w starts and stops it.")
@click.option("--no-bell", is_flag=True, help="No terminal bell when a probe flips (UP/DOWN/DEGRADED).")
@click.option("--on-change", "on_change", metavar="CMD", help="Run CMD (with /bin/sh) on each flip, the flip as "
              "one JSON object on its stdin (e.g. a curl to a chat webhook).")
@telemetry_options
@click.version_option(package_name="stagewatch")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, target: str | None, url: str | None, fault: str,
         expect_version: str | None, fail_fast: bool, only: tuple[str, ...], max_priority: int | None,
         insecure: bool, allow_production: bool, record_path: str | None, no_record: bool, watch: float | None,
         no_bell: bool, on_change: str | None, otlp: str | None, metrics_port: int | None,
         metrics_host: str | None) -> None:
    """Watch the golden path live: health → auth → connect → handshake → message → agent → response.

    With no command, opens the live monitor against the default target (the embedded sandbox); with --watch,
    runs it in rounds while a deploy rolls.
    """
    if ctx.invoked_subcommand is not None:
        return
    config, resolved, options = prepare(config_path, target, url, fault, expect_version, fail_fast, only,
                                         max_priority, insecure, allow_production)
    otlp_endpoint, metrics_port, metrics_host_ = telemetry(otlp, metrics_port, metrics_host)
    if watch == WATCH_DEFAULT:
        watch = config.watch.interval_s
    _open_app(config, resolved, options, record_path_for(record_path, no_record, resolved.name, config), watch=watch,
              bell=not no_bell, on_change=on_change or None,
              telemetry=Telemetry(target=resolved.name, metrics_port=metrics_port,
                                  metrics_host=metrics_host_, otlp_endpoint=otlp_endpoint, quiet=True)
              if otlp_endpoint is not None or metrics_port is not None else None)


def _open_app(config: Config, target: ResolvedTarget | None, options: RunOptions, record: Path | None,
              replay: Path | None = None, *, watch: float | None = None, bell: bool = True,
              on_change: str | None = None, telemetry: Telemetry | None = None) -> None:
    from tui.app import run_app  # the Textual import is paid only here

    sys.exit(run_app(config=config, target=target, options=options, record_path=record, replay_path=replay,
                     watch=watch, bell=bell, on_change=on_change, telemetry=telemetry))


# `run --pytest ARGS…` and `pytest ARGS…`: everything after the first argument (or after `--`) is pytest's.
_PYTEST_ARGS = {"ignore_unknown_options": True, "allow_interspersed_args": False}
_PYTEST_HELP = ("Run your own pytest suite as the queue: the arguments after the options (put them after `--` when "
                "they start with an option stagewatch has too, e.g. -v) go to pytest, run with stagewatch's plugin.")


@main.command(context_settings=_PYTEST_ARGS)
@target_options
@click.option("--pytest", "use_pytest", is_flag=True, help=_PYTEST_HELP)
@report_options
@click.option("--watch", "watch_every", type=DURATION, metavar="INTERVAL",
              help="Run the queue in rounds every INTERVAL (10s, 2m; a bare number is seconds) while a deploy "
                   "rolls: a line per round and per change. Until Ctrl-C, --count, --for or --until-*.")
@click.option("--count", type=click.IntRange(min=1), metavar="N", help="With --watch: stop after N rounds.")
@click.option("--for", "for_s", type=DURATION, metavar="DURATION", help="With --watch: stop after this long (30m).")
@click.option("--until-pass", is_flag=True, help="With --watch: end (exit 0) at the first round that passes.")
@click.option("--until-version", metavar="BUILD",
              help="With --watch: end (exit 0) once health reports BUILD and the round passes (the deploy landed).")
@click.option("--jsonl", "jsonl_path", type=click.Path(dir_okay=False, path_type=Path),
              help="With --watch: append one JSON object per round to this file as it happens.")
@click.option("--on-change", metavar="CMD",
              help="With --watch: run CMD on every flip (DOWN, UP, DEGRADED), the flip as JSON on its stdin.")
@click.option("--no-bell", is_flag=True, help="With --watch: no terminal bell on a flip.")
@telemetry_options
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- PYTEST ARGS…]")
def run(config_path: str | None, target: str | None, url: str | None, fault: str, expect_version: str | None,
        fail_fast: bool, only: tuple[str, ...], max_priority: int | None, insecure: bool, allow_production: bool,
        use_pytest: bool, json_path: Path | None, junit_path: Path | None, markdown_path: Path | None,
        record_path: str | None, no_record: bool, verbose: bool, quiet: bool, watch_every: float | None,
        count: int | None, for_s: float | None, until_pass: bool, until_version: str | None,
        jsonl_path: Path | None, on_change: str | None, no_bell: bool, otlp: str | None, metrics_port: int | None,
        metrics_host: str | None, pytest_args: tuple[str, ...]) -> None:
    """Run the probe queue headless: a line per stage, a verdict, reports. Exit 0 pass, 1 fail, 2 usage.

    With --watch, the queue runs in rounds: a line per round, a line per flip; the reports describe the whole
    watch (rounds, flips, outages, builds) and its verdict is the last round's. With --pytest, the queue is your
    own pytest suite (`stagewatch run --pytest -- examples/e2e -k auth`): each test shown like a probe."""
    if not use_pytest and pytest_args:
        if pytest_args[0].startswith("-"):
            raise click.NoSuchOption(pytest_args[0], ctx=click.get_current_context())
        raise click.UsageError(f"Got unexpected extra argument ({one_line(pytest_args[0])}); pytest arguments go "
                               "with --pytest", ctx=click.get_current_context())
    given = {"--count": count is not None, "--for": for_s is not None, "--until-pass": until_pass,
             "--until-version": until_version is not None, "--jsonl": jsonl_path is not None,
             "--on-change": on_change is not None, "--no-bell": no_bell}
    if watch_every is None:
        orphan = next((name for name, on in given.items() if on), None)
        if orphan:
            fail(f"{orphan} goes with --watch")
    elif watch_every < 0.05:
        fail("--watch: the interval must be at least 50ms")
    if use_pytest:
        _pytest_usable(only, expect_version)
    otlp_endpoint, metrics_port, metrics_host_ = telemetry(otlp, metrics_port, metrics_host)
    config, resolved, options = prepare(config_path, target, url, fault, expect_version, fail_fast, only,
                                         max_priority, insecure, allow_production)
    if not use_pytest:
        check_credentials(config, resolved, options)
    req = HeadlessRequest(config, resolved, options, json_path, junit_path, markdown_path,
                          record_path_for(record_path, no_record, resolved.name, config), verbose, quiet,
                          watch=watch_every, count=count, for_s=for_s, until_pass=until_pass,
                          until_version=until_version, jsonl_path=jsonl_path, on_change=on_change,
                          bell=config.watch.bell and not no_bell,
                          record_max_bytes=int(config.recording.max_file_mb * 1024 * 1024),
                          pytest_args=pytest_args if use_pytest else None, otlp_endpoint=otlp_endpoint,
                          metrics_port=metrics_port, metrics_host=metrics_host_)
    sys.exit(run_headless(req))


def _pytest_usable(only: tuple[str, ...], expect_version: str | None) -> None:
    """What a pytest run cannot honour is refused, not ignored; pytest must be importable here."""
    import importlib.util

    if only:
        fail("--only names probes; to pick tests give pytest its own -k or node ids")
    if expect_version:
        fail("--expect-version checks the probes' health stage; a pytest suite checks builds itself")
    if importlib.util.find_spec("pytest") is None:
        fail(f"running a pytest suite needs pytest in this Python ({sys.executable}): pip install pytest")


@main.command(context_settings=_PYTEST_ARGS)
@target_options
@report_options
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- PYTEST ARGS…]")
def pytest(config_path: str | None, target: str | None, url: str | None, fault: str, expect_version: str | None,
           fail_fast: bool, only: tuple[str, ...], max_priority: int | None, insecure: bool, allow_production: bool,
           json_path: Path | None, junit_path: Path | None, markdown_path: Path | None, record_path: str | None,
           no_record: bool, verbose: bool, quiet: bool, pytest_args: tuple[str, ...]) -> None:
    """Your own pytest suite as the queue, each test shown like a probe (stages, frames, close, diagnosis).

    `stagewatch pytest examples/e2e -k auth`: the embedded sandbox's URL and key reach the suite as
    STAGEWATCH_BASE_URL, STAGEWATCH_WS_URL and JWT_SECRET_KEY. Opens the live monitor (`r` reruns the focused
    test alone); with --json/--junit/--markdown or -q it runs headless, like `stagewatch run --pytest`."""
    _pytest_usable(only, expect_version)
    config, resolved, options = prepare(config_path, target, url, fault, expect_version, fail_fast, only,
                                         max_priority, insecure, allow_production)
    record = record_path_for(record_path, no_record, resolved.name, config)
    if not (json_path or junit_path or markdown_path or quiet):
        from tui.app import run_app

        sys.exit(run_app(config=config, target=resolved, options=options, record_path=record, replay_path=None,
                         pytest_args=pytest_args))
    sys.exit(run_headless(HeadlessRequest(config, resolved, options, json_path, junit_path, markdown_path, record,
                                          verbose, quiet, pytest_args=pytest_args,
                                          record_max_bytes=int(config.recording.max_file_mb * 1024 * 1024))))


_DEPLOY_HELP = ('Play a deploy, e.g. "0s ok@v1, 5s restart, 7s closed-before-ready@v2, 12s ok@v2, 20s rolling@v3": '
                'steps <offset> <ok|FAULT|down|restart|rolling>[@BUILD], offsets from the start (rolling: the open '
                'sessions drained, some dropped, 503 for a gap, then BUILD).')


def _deploy_steps(script: str | None) -> list[DeployStep] | None:
    """The parsed --deploy script, or None without one; a bad script is a usage error (one line, exit 2)."""
    if script is None:
        return None
    try:
        return parse_deploy(script)
    except ValueError as exc:
        fail(str(exc))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback only).")
@click.option("--port", "-p", default=8765, show_default=True, type=click.IntRange(0, 65535))
@click.option("--fault", type=FAULT_CHOICE, default="none", show_default=True, help="Failure mode to show.")
@click.option("--flood", "flood_count", default=None, type=click.IntRange(1), help="Frames per message (flood).")
@click.option("--delay", default=None, type=click.FloatRange(0), help="Seconds between agent events (slow-agent).")
@click.option("--deploy", "deploy_script", metavar="SCRIPT", help=_DEPLOY_HELP)
@click.option("--rolling-at", type=DURATION, default=None, metavar="DURATION",
              help="rolling-restart: when the rollout begins (default 2s).")
@click.option("--drain", "drain_s", type=DURATION, default=None, metavar="DURATION",
              help="A rollout closes the open sessions over this window (default 2s).")
@click.option("--drop-every", type=click.IntRange(0), default=None, metavar="N",
              help="A rollout drops every N-th open session without a close frame (default 10; 0: none).")
@click.option("--refuse", "refuse_s", type=DURATION, default=None, metavar="DURATION",
              help="After the drain, new connections and health get 503 this long (default 1s).")
@click.option("--idle-after", type=DURATION, default=None, metavar="DURATION",
              help="idle-timeout: every session ends at this age (default 3s).")
@click.option("--list-faults", is_flag=True, help="List the faults and exit.")
def sandbox(host: str, port: int, fault: str, flood_count: int | None, delay: float | None,
            deploy_script: str | None, rolling_at: float | None, drain_s: float | None, drop_every: int | None,
            refuse_s: float | None, idle_after: float | None, list_faults: bool) -> None:
    """Run the sandbox server standalone, so another terminal can probe it with `stagewatch run --url`."""
    from datetime import datetime

    from probes.handoff import remove_handoff, write_handoff
    from probes.sandbox import Sandbox, SandboxOptions
    from probes.sandbox.server import fault_help

    if list_faults:
        click.echo(fault_help())
        return
    if not is_loopback(host):
        fail("the sandbox listens on loopback only (127.0.0.1, localhost or ::1)")
    opts = SandboxOptions(fault=fault, deploy=_deploy_steps(deploy_script))
    if os.environ.get("JWT_SECRET_KEY"):
        opts.secret = os.environ["JWT_SECRET_KEY"]
    if flood_count is not None:
        opts.flood = flood_count
    if delay is not None:
        opts.delay = delay
    for name, value in (("rolling_at", rolling_at), ("drain_s", drain_s), ("drop_every", drop_every),
                        ("refuse_s", refuse_s), ("idle_after_s", idle_after)):
        if value is not None:
            setattr(opts, name, value)

    def applied(step: DeployStep) -> None:  # one line, with the wall time it was applied
        click.echo(f"{datetime.now().strftime('%H:%M:%S.%f')[:-3]}  {one_line(step.describe())}")

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is not None:  # every way a terminal or a supervisor ends it removes the hand-off file
                loop.add_signal_handler(sig, stop.set)
        sb = Sandbox(opts, host=host, port=port)
        try:
            await sb.start()
        except OSError as exc:
            fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
        try:
            write_handoff(sb.port, opts.secret, sb.release_build)
            click.echo(f"stagewatch sandbox on {sb.base_url} (ws {sb.base_url.replace('http', 'ws')}"
                       f"{opts.ws_path}) · fault: {fault} — {opts.fault_words()}")
            if opts.deploy:
                click.echo(f"health reports build {sb.build}; deploy of {len(opts.deploy)} steps playing (no "
                           "release build: runs expect one only with --expect-version)")
            else:
                click.echo(f"health reports build {sb.build}; release build {sb.release_build}")
            click.echo(f"probe it:  stagewatch run --url {sb.base_url}     (Ctrl-C to stop)")
            for step in (opts.deploy or [])[:sb.applied]:  # the steps at 0s, applied by start()
                applied(step)
            sb.on_step.append(applied)
            sb.on_rollout.append(lambda r: click.echo(
                f"{datetime.now().strftime('%H:%M:%S.%f')[:-3]}  rollout {r.number}: {r.sessions} open sessions — "
                f"{r.closed} closed {r.code}, {r.dropped} dropped (no close frame) — now {one_line(r.build)}"))
            await stop.wait()
        finally:
            remove_handoff(sb.port)
            await sb.stop()

    asyncio.run(serve())


@main.command()
@click.option("--config", "config_path", metavar="PATH", help="Config file.")
@click.option("--fault", type=FAULT_CHOICE, default="none", show_default=True, help="Failure mode to show.")
@click.option("--deploy", "deploy_script", metavar="SCRIPT", help=_DEPLOY_HELP)
@click.option("--record", "record_path", metavar="PATH", help="Record the session here.")
@click.option("--no-record", is_flag=True, help="Do not record the session.")
@click.option("--watch", "watch", metavar="DURATION", is_flag=False, flag_value="", default=None,
              callback=_watch_interval, help="Watch: the queue in rounds every DURATION (default with --deploy: "
              f"{DEMO_WATCH_S:g}s, so a short script is seen round by round; alone: the config's watch.interval_s).")
def demo(config_path: str | None, fault: str, deploy_script: str | None, record_path: str | None,
         no_record: bool, watch: float | None) -> None:
    """Open the live monitor against the embedded sandbox with a fault switched on (or a deploy playing, watched
    round by round: every 2 s unless --watch says otherwise)."""
    from probes.sandbox import SandboxOptions

    steps = _deploy_steps(deploy_script)
    config = load(config_path)
    if SANDBOX not in [t.base_url for t in config.targets.values()]:
        fail("the config has no sandbox target (base_url: sandbox)")
    name = next(n for n, t in config.targets.items() if t.base_url == SANDBOX)
    resolved = pick_target(config, name, None, allow_production=False, insecure=False)
    options = RunOptions(fault=fault)
    if steps is not None:  # one sandbox plays it across the app's rounds (shared_sandbox)
        options.sandbox_options = SandboxOptions(fault=fault, ws_path=resolved.protocol.ws_path, deploy=steps)
    label = f"demo-{fault}" if steps is None else "demo-deploy"
    if watch == WATCH_DEFAULT:
        watch = config.watch.interval_s
    elif watch is None and steps is not None:
        watch = DEMO_WATCH_S
    _open_app(config, resolved, options, record_path_for(record_path, no_record, label, config), watch=watch)


@main.command()
@click.argument("recording", type=click.Path(path_type=Path), required=False)
@click.option("--last", is_flag=True, help="The newest recording in the default folder (see `stagewatch recordings`).")
@click.option("--config", "config_path", metavar="PATH", help="Config file.")
@click.option("--markdown", is_flag=True, help="Print a Markdown report of the recording instead of opening it.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report of the recording instead.")
def replay(recording: Path | None, last: bool, config_path: str | None, markdown: bool, as_json: bool) -> None:
    """Show a recorded session exactly as it ran (pause, step, speed), or print its report."""
    from probes.recording import RECORDING_VERSION, RecordingError, default_recordings_dir, read_recording
    from probes.model import RunModel
    from probes.report import write_json, write_markdown
    from probes.retention import newest_recordings

    if (recording is None) == (not last):
        fail("replay: give a RECORDING or --last (not both)")
    if recording is None:
        found = newest_recordings(default_recordings_dir(), 1)
        if not found:
            fail(f"replay --last: no recording in {default_recordings_dir()} yet")
        recording = found[0]
        click.echo(one_line(f"stagewatch: replaying {recording}"), err=True)
    try:
        rec = read_recording(recording)
    except RecordingError as exc:
        fail(str(exc))
    if rec.version > RECORDING_VERSION:
        click.echo(f"stagewatch: warning: {one_line(str(recording))} is a version {rec.version} recording (this "
                   f"stagewatch reads version {RECORDING_VERSION}); showing what it can", err=True)
    if markdown or as_json:
        config = load(config_path)
        model = RunModel()  # a watch's recording: the same rounds, flips and outages as it had live
        model.history.configure(confirm=config.watch.confirm, keep_rounds=config.watch.keep_rounds)
        model.apply_all(rec.events)
        click.echo(write_markdown(model) if markdown else write_json(model), nl=False)
        return
    _open_app(load(config_path), None, RunOptions(), None, replay=recording)


@main.command()
@click.option("-n", "count", type=click.IntRange(1, 500), default=10, show_default=True, help="How many.")
def recordings(count: int) -> None:
    """The newest recordings in the default folder, with their target, verdict, runs and fault: what
    `stagewatch replay --last` (or `replay PATH`) opens."""
    from probes.recording import default_recordings_dir
    from probes.retention import newest_recordings
    from tui.recordings import describe

    folder = default_recordings_dir()
    found = newest_recordings(folder, count)
    if not found:
        click.echo(f"no recordings in {folder} yet")
        return
    click.echo(f"{folder}:")
    for path in found:
        click.echo(describe(path))


# Commands for reproducing by hand, each in its own module over tui/cli_common.py.
from tui.cli_console import console  # noqa: E402
from tui.cli_diff import diff  # noqa: E402
from tui.cli_matrix import matrix  # noqa: E402
from tui.cli_repro import repro, token  # noqa: E402
from tui.cli_follow import follow  # noqa: E402

for _command in (console, diff, matrix, repro, token, follow):
    main.add_command(_command)


def entry() -> None:
    """The console script: Click's own usage errors (unknown option, bad value) as one line, exit 2."""
    try:
        code = main.main(prog_name="stagewatch", standalone_mode=False)
    except click.UsageError as exc:
        fail(f"{exc.format_message()} (see '{exc.ctx.command_path if exc.ctx else 'stagewatch'} --help')")
    except click.ClickException as exc:
        fail(exc.format_message())
    except click.Abort:
        click.echo("stagewatch: interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    entry()
