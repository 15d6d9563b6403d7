"""`stagewatch matrix` (being written)."""

from __future__ import annotations

import click

from tui.cli_common import fail


@click.command()
def matrix() -> None:
    """Not written yet."""
    fail("stagewatch matrix: not written yet")
