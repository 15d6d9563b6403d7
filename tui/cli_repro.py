"""`stagewatch repro` and `stagewatch token`: the golden path to reproduce by hand, and a fresh token for it.

`repro` prints one form (websocat, python, wscat, curl; probes/repro.py writes them) that works as printed: for the
default target, whose embedded sandbox lives only inside a run, the lines first start a standalone sandbox (or use
the one already on that port) and get the token with its key. `token` prints only the token on stdout (for
`export TOKEN=$(stagewatch token …)`) and one line on stderr saying where it came from. Both take only the options
they honour: anything else is refused with one line (exit 2), never ignored.
"""

from __future__ import annotations

import os

import click

from tui.cli_common import DURATION, fail, load, pick_target, where_options


@click.command()
@where_options
@click.option("--form", type=click.Choice(["websocat", "python", "wscat", "curl"]), default=None,
              help="websocat (default): frames and the close code; python: a self-contained script; wscat: "
                   "interactive; curl: the HTTP stages (health, header echo, the upgrade's status).")
@click.option("--python", "as_python", is_flag=True, help="Same as --form python.")
@click.option("--port", type=click.IntRange(1, 65535), default=None, metavar="PORT",
              help="Default (embedded sandbox) target only: the port of the standalone sandbox the printed lines "
                   "start or use (default 8765).")
def repro(config_path: str | None, target: str | None, url: str | None, allow_production: bool, form: str | None,
          as_python: bool, port: int | None) -> None:
    """Print the golden path to reproduce by hand, as it works when pasted: websocat (default), a Python script,
    wscat, or curl for the HTTP stages. No token is shown: the lines read $TOKEN from `stagewatch token`.

    Against the default target (the embedded sandbox, which lives only inside a run) the lines start a standalone
    `stagewatch sandbox --port 8765 &` first. Queue options (--only, --fault, …) are refused, not ignored."""
    from probes.redact import Redactor
    from probes.repro import repro_for

    if as_python and form not in (None, "python"):
        fail(f"--python is --form python; give one of them, not --form {form} as well")
    chosen = "python" if as_python else form or "websocat"
    config = load(config_path)
    resolved = pick_target(config, target, url, allow_production=allow_production, insecure=False)
    if port is not None and not resolved.is_sandbox:
        fail("--port applies to the default (embedded sandbox) target only, whose standalone sandbox it places; "
             "with --url or --target the port is the target's own")
    text = repro_for(chosen, resolved, config_path=config_path, port=port)
    redactor = Redactor([])  # a backstop: the forms name variables, never a value of one
    for name in (resolved.auth.secret_env, resolved.auth.token_env):
        redactor.add(os.environ.get(name))
    click.echo(redactor.text(text))


@click.command()
@where_options
@click.option("--claims", "claims", multiple=True, metavar="KEY=VALUE",
              help="A claim over the configured ones (a JSON value, or else text); repeatable. Minted tokens only.")
@click.option("--ttl", type=DURATION, default=None, metavar="DURATION",
              help="Lifetime of a minted token (900s, 15m; default: auth.ttl_s).")
@click.option("--wait", "wait_s", type=DURATION, default=None, metavar="DURATION",
              help="Wait up to this long for the target to listen (and a standalone sandbox to leave its key): "
                   "for a sandbox just started with `&`.")
def token(config_path: str | None, target: str | None, url: str | None, allow_production: bool,
          claims: tuple[str, ...], ttl: float | None, wait_s: float | None) -> None:
    """Print a fresh token for the target on stdout, for `export TOKEN=$(stagewatch token --url …)`.

    Minted like a run mints it: with $JWT_SECRET_KEY (auth.secret_env), or for a standalone sandbox on this machine
    with the key it left in its runtime file (no secret needed); auth.mode env prints $STAGEWATCH_TOKEN, endpoint
    fetches one. Where it came from goes to stderr, in one line."""
    from datetime import datetime

    from probes.auth import AuthError
    from probes.repro import get_token, parse_claim, wait_for_target, with_claims
    from probes.sanitize import one_line

    config = load(config_path)
    resolved = pick_target(config, target, url, allow_production=allow_production, insecure=False)
    if resolved.is_sandbox:
        fail("the embedded sandbox's key lives only inside a run: start `stagewatch sandbox --port 8765 &` and "
             "use `stagewatch token --url http://127.0.0.1:8765`")
    mode = resolved.auth.mode
    if (claims or ttl is not None) and mode != "mint":
        fail(f"--claims and --ttl apply to minted tokens only; target {resolved.name!r} has auth.mode {mode!r}")
    if claims or ttl is not None:
        try:
            extra = dict(parse_claim(c) for c in claims)
        except ValueError as exc:
            fail(str(exc))
        if ttl is not None and ttl < 1:
            fail("--ttl: a token lives at least 1 s")
        resolved = with_claims(resolved, extra, round(ttl) if ttl is not None else None)
    if wait_s is not None and not wait_for_target(resolved, wait_s):
        fail(f"nothing answered at {resolved.base_url} within {wait_s:g} s (is the server or sandbox running?)")
    try:
        info = get_token(resolved)
    except AuthError as exc:
        fail(f"target {resolved.name!r}: {exc}")
    click.echo(info.token)
    facts = [info.source]
    if info.subject:
        facts.append(f"sub {info.subject}")
    if info.expires_at:
        facts.append(f"expires {datetime.fromtimestamp(info.expires_at).strftime('%H:%M:%S')}")
    click.echo(f"stagewatch token: {one_line(' · '.join(facts))}", err=True)
