"""`stagewatch follow [RECORDING | --latest]`: watch a session another stagewatch is recording right now.

The app opens read-only on the recording (`run_app(..., follow_path=path)`), catching up from the start and then
showing each line as it is written, until the recording ends (its recorder closes it) — a partner on another ssh
session sees the same run live. Nothing is probed and no token is held: the recording is redacted already.
`--print` follows without the app, printing the run's lines as `stagewatch run` prints them live (a line per
round with `--rounds`): for a terminal without a TTY, a log, or a test.

Bad input (no recording, an unreadable file, not a recording) is one line on stderr and exit 2.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import click

from probes.follow import POLL_S, FollowError, Tail, follow_batches, idle_words, latest_recording, newer_version
from probes.recording import RECORDING_VERSION, default_recordings_dir
from probes.sanitize import one_line
from tui.cli_common import DURATION, fail, load

EXIT_INTERRUPTED = 130


def _say(text: str) -> None:
    click.echo(one_line(f"stagewatch: {text}"), err=True)


@click.command()
@click.argument("recording", type=click.Path(path_type=Path), required=False)
@click.option("--latest", is_flag=True, help="The newest recording in the default folder that is still being "
              "written (else the newest at all).")
@click.option("--config", "config_path", metavar="PATH", help="Config file (watch.confirm for --print --rounds).")
@click.option("--print", "to_print", is_flag=True, help="No app: print the run's lines as `stagewatch run` does.")
@click.option("--rounds", is_flag=True, help="With --print: a line per round (a watch's recording), as "
              "`stagewatch run --watch` prints.")
@click.option("--verbose", "-v", is_flag=True, help="With --print: also skipped stages and diagnosis evidence.")
@click.option("--idle", "idle_s", type=DURATION, default="30m", show_default=True, metavar="DURATION",
              help="Stop once the recording has not changed for this long (its recorder gone without closing it); "
                   "0: never.")
def follow(recording: Path | None, latest: bool, config_path: str | None, to_print: bool, rounds: bool,
           verbose: bool, idle_s: float) -> None:
    """Watch a session another stagewatch is recording right now, live and read-only, from its start.

    Ends when the recording ends (its recorder closes it). Give the recording's path (its first file; a rotated
    recording is followed into its parts) or --latest."""
    if (recording is None) == (not latest):
        fail("follow: give a RECORDING or --latest (not both)")
    if (rounds or verbose) and not to_print:
        fail("--rounds and --verbose go with --print")
    if recording is None:
        recording = latest_recording()
        if recording is None:
            fail(f"follow --latest: no recording in {default_recordings_dir()} yet")
        _say(f"following {recording}")
    try:
        tail = Tail(recording)
    except FollowError as exc:
        fail(str(exc))
    idle = idle_s or None
    if not to_print:
        tail.close()  # the app opens its own
        config = load(config_path)
        from probes.options import RunOptions
        from tui.app import run_app  # the Textual import is paid only here

        sys.exit(run_app(config=config, target=None, options=RunOptions(), record_path=None, replay_path=None,
                         follow_path=recording, follow_idle=idle))
    config = load(config_path)
    try:
        code = asyncio.run(_print(tail, rounds=rounds, verbose=verbose, confirm=config.watch.confirm, idle=idle))
    except KeyboardInterrupt:
        tail.close()
        _say("interrupted")
        code = EXIT_INTERRUPTED
    except FollowError as exc:
        fail(str(exc))
    sys.exit(code)


async def _print(tail: Tail, *, rounds: bool, verbose: bool, confirm: int, idle: float | None) -> int:
    """Feed the followed events to the headless printer (the same fold and lines as `stagewatch run`)."""
    from probes.headless import Printer

    printer = Printer(verbose=verbose, rounds=rounds, confirm=confirm)
    warned = False
    try:
        async for batch in follow_batches(tail, poll=POLL_S, idle=idle):
            if not warned and newer_version(tail):
                warned = True
                _say(f"warning: a version {tail.version} recording (this stagewatch reads version "
                     f"{RECORDING_VERSION}); showing what it can")
            for event in batch:
                printer.handle(event)  # sanitises every string of the event before it is printed
    except BrokenPipeError:  # `… | head`: the reader left; so do we, quietly
        _quiet_stdout()
        return 0
    if tail.skipped:
        _say(f"warning: {tail.skipped} unreadable line(s) skipped")
    if tail.ended == "idle":
        cut = " (its last line cut short)" if tail.truncated else ""
        _say(f"the recording has not changed for {idle_words(idle or 0)}: its recorder seems gone without closing "
             f"it{cut}")
    else:
        _say("the recording ended")
    return 0


def _quiet_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":  # `python -m tui.cli_follow` until `follow` is registered in tui/cli.py
    follow.main(prog_name="stagewatch follow")
