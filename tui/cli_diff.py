"""`stagewatch diff A B`: compare two recorded runs (or two rounds of one watch recording) headless.

Prints `probes.diff.render_text` (or `render_markdown` with --markdown): a headline per probe, stage timings side by
side, frames aligned by order and type with the first divergence marked, close and diagnoses. Exit 0 when no
probe's status differs, 1 when one does, 2 for a file that cannot be read as a recording or a round it lacks (one
line on stderr, as `replay`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from tui.cli_common import fail


@click.command()
@click.argument("recording_a", metavar="A", type=click.Path(path_type=Path))
@click.argument("recording_b", metavar="B", type=click.Path(path_type=Path))
@click.option("--round-a", type=click.IntRange(min=1), metavar="N",
              help="Compare round N of A (a watch's recording; default: each probe's latest result).")
@click.option("--round-b", type=click.IntRange(min=1), metavar="N", help="Compare round N of B.")
@click.option("--markdown", is_flag=True, help="Print Markdown to paste into an issue instead of text.")
@click.option("--probe", "probe", metavar="ID", help="Compare only this probe.")
def diff(recording_a: Path, recording_b: Path, round_a: int | None, round_b: int | None, markdown: bool,
         probe: str | None) -> None:
    """Compare two runs: A and B are recordings (the same watch recording with --round-a/--round-b picks two of
    its rounds). Exit 0 when no probe's status differs, 1 when one does, 2 when a file cannot be read."""
    from probes.diff import DiffError, diff_recordings, render_markdown, render_text
    from probes.recording import RecordingError

    try:
        result = diff_recordings(recording_a, recording_b, round_a=round_a, round_b=round_b, probe=probe)
    except (RecordingError, DiffError) as exc:
        fail(f"stagewatch diff: {exc}")
    if markdown:
        click.echo(render_markdown(result), nl=False)
    else:
        color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        click.echo(render_text(result, color=color), nl=False, color=color)
    sys.exit(1 if result.status_differs else 0)
