"""`stagewatch repro` and `stagewatch token`: the golden path to reproduce by hand, and a fresh token for it."""

from __future__ import annotations

import click

from tui.cli_common import fail, load, pick_target, where_options


@click.command()
@where_options
@click.option("--python", "as_python", is_flag=True, help="Print a Python script instead of a websocat command.")
def repro(config_path: str | None, target: str | None, url: str | None, allow_production: bool,
          as_python: bool) -> None:
    """Print the golden path as a websocat command (or Python script) to reproduce by hand. No token shown.

    It takes only the options it honours: queue options (--only, --fault, …) are refused, not ignored."""
    from probes.context import ws_url_for
    from probes.repro import python_script, websocat

    config = load(config_path)
    resolved = pick_target(config, target, url, allow_production=allow_production, insecure=False)
    if resolved.is_sandbox:
        fail("the embedded sandbox lives only inside a run; start `stagewatch sandbox` and use --url")
    ws = ws_url_for(resolved, resolved.base_url)
    click.echo(python_script(resolved, ws) if as_python else websocat(resolved, ws))


@click.command()
def token() -> None:
    """Print a fresh token to stdout (for `export TOKEN=$(stagewatch token)`). Not written yet."""
    fail("stagewatch token: not written yet")
