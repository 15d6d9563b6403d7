"""`stagewatch matrix`: the auth-path matrix — one connection per token transport, a table of what happened to
each and one conclusion (e.g. "the Authorization header does not reach the backend; the subprotocol does: a proxy
strips it"). Exit 0 when every transport works, 1 when one fails, 2 on a usage or config error."""

from __future__ import annotations

import asyncio
import os
import sys
from urllib.parse import urlsplit

import click

from tui.cli_common import FAULT_CHOICE, fail, load, pick_target, where_options


@click.command()
@where_options
@click.option("--fault", type=FAULT_CHOICE, default="none", show_default=True,
              help="Fault for the embedded sandbox target (e.g. strip-auth-header).")
@click.option("--insecure", is_flag=True, help="Do not verify TLS certificates.")
@click.option("--json", "as_json", is_flag=True, help="Print the matrix as JSON instead of a table.")
@click.option("--markdown", "as_markdown", is_flag=True, help="Print the matrix as Markdown (to paste into an issue).")
def matrix(config_path: str | None, target: str | None, url: str | None, allow_production: bool, fault: str,
           insecure: bool, as_json: bool, as_markdown: bool) -> None:
    """Connect once per way of carrying the token — subprotocol, Authorization header, query parameter, both,
    none — and say what reached the backend (with protocol.echo_headers_path) and which transport works."""
    from probes.auth import credentials_problem
    from probes.matrix import run_matrix
    from probes.net import is_loopback
    from probes.options import RunOptions

    if as_json and as_markdown:
        fail("give --json or --markdown, not both")
    config = load(config_path)
    resolved = pick_target(config, target, url, allow_production=allow_production, insecure=insecure)
    if fault != "none" and not resolved.is_sandbox:
        fail("--fault applies to the embedded sandbox only; for a standalone one use `stagewatch sandbox --fault`")
    if resolved.auth.mode == "none":
        fail(f"target {resolved.name!r}: auth.mode is 'none': there is no token to carry")
    if not resolved.is_sandbox:  # the embedded sandbox brings its own key
        parts = urlsplit(resolved.base_url)
        problem = credentials_problem(resolved.auth, os.environ,
                                      loopback_port=parts.port if is_loopback(parts.hostname) else None)
        if problem:
            fail(f"target {resolved.name!r}: {problem}; export it, or set auth.mode in the config")
    result = asyncio.run(run_matrix(config, resolved, RunOptions(fault=fault)))
    if as_json:
        click.echo(result.render_json())
    elif as_markdown:
        click.echo(result.render_markdown(), nl=False)
    else:
        click.echo(result.render_text())
    sys.exit(0 if result.ok else 1)
