"""`stagewatch diff` (being written)."""

from __future__ import annotations

import click

from tui.cli_common import fail


@click.command()
def diff() -> None:
    """Not written yet."""
    fail("stagewatch diff: not written yet")
