"""`stagewatch console` (being written)."""

from __future__ import annotations

import click

from tui.cli_common import fail


@click.command()
def console() -> None:
    """Not written yet."""
    fail("stagewatch console: not written yet")
