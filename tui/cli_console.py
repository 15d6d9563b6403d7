"""`stagewatch console`: the app with the console open on the target — a session of your own, no queue run."""

from __future__ import annotations

import click

from tui.cli_common import FAULT_CHOICE, fail, load, pick_target, record_path_for, where_options


@click.command()
@where_options
@click.option("--fault", type=FAULT_CHOICE, default="none", show_default=True,
              help="Fault for the embedded sandbox target.")
@click.option("--insecure", is_flag=True, help="Do not verify TLS certificates.")
@click.option("--record", "record_path", metavar="PATH", help="Record the session here (default: user data dir).")
@click.option("--no-record", is_flag=True, help="Do not record the session.")
def console(config_path: str | None, target: str | None, url: str | None, allow_production: bool, fault: str,
            insecure: bool, record_path: str | None, no_record: bool) -> None:
    """Open the console on the target: compose and send frames, ping, close with a code, reconnect with another
    token transport, headers, claims or subprotocol — every frame, the close and the diagnosis in the panes."""
    import sys

    from probes.options import RunOptions
    from tui.app import run_app

    config = load(config_path)
    resolved = pick_target(config, target, url, allow_production=allow_production, insecure=insecure)
    if fault != "none" and not resolved.is_sandbox:
        fail("--fault applies to the embedded sandbox only; for a standalone one use `stagewatch sandbox --fault`")
    record = record_path_for(record_path, no_record, resolved.name, config)
    sys.exit(run_app(config=config, target=resolved, options=RunOptions(fault=fault), record_path=record,
                     replay_path=None, console=True))
