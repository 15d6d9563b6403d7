"""Reproduce a probe by hand: the golden path as a `websocat` command and as a short Python script.

The token never appears: commands read it from $TOKEN, and a first line shows how to mint it from the secret's
environment variable, so what is copied into a chat or an issue is safe to paste.
"""

from __future__ import annotations

import json
import shlex

from .config import ResolvedTarget


def _mint_line(target: ResolvedTarget) -> str:
    a = target.auth
    if a.mode == "env":
        return f'export TOKEN="${a.token_env}"'
    claims = json.dumps({k: v for k, v in a.claims.items()})
    return ('export TOKEN=$(python3 -c \'import jwt, os, time; c = ' + claims + '; '
            f'c.update(iat=int(time.time()), exp=int(time.time()) + {a.ttl_s}); '
            f'print(jwt.encode(c, os.environ["{a.secret_env}"], algorithm="{a.algorithm}"))\')')


def message_json(target: ResolvedTarget, index: int = 0) -> str:
    p = target.protocol
    text = p.messages[index % len(p.messages)]
    rendered = json.loads(json.dumps(p.message_template).replace("{text}", json.dumps(text)[1:-1]))
    return json.dumps(rendered)


def websocat(target: ResolvedTarget, ws_url: str) -> str:
    p = target.protocol
    parts = ["websocat", "-v"]
    if "header" in p.token_transport:
        parts += ["-H", '"Authorization: Bearer $TOKEN"']
    for name, value in p.headers.items():
        parts += ["-H", shlex.quote(f"{name}: {value}")]
    if "subprotocol" in p.token_transport:
        parts += ["--protocol", '"jwt.$(printf %s "$TOKEN" | base64 -w0 | tr "+/" "-_" | tr -d "=")"']
    url = ws_url + (f"?{p.query_param}=$TOKEN" if "query" in p.token_transport else "")
    parts.append(f'"{url}"')
    return "\n".join([_mint_line(target), " ".join(parts),
                      f"# then paste: {message_json(target)}"])


def python_script(target: ResolvedTarget, ws_url: str) -> str:
    p = target.protocol
    headers = dict(p.headers)
    lines = [
        "# pip install websockets   ·   export TOKEN=...   (see the first line of the websocat form)",
        "import asyncio, base64, json, os",
        "from websockets.asyncio.client import connect",
        "",
        "TOKEN = os.environ['TOKEN']",
        f"HEADERS = {headers!r}",
    ]
    if "header" in p.token_transport:
        lines.append("HEADERS['Authorization'] = f'Bearer {TOKEN}'")
    sub = ("[ 'jwt.' + base64.urlsafe_b64encode(TOKEN.encode()).decode().rstrip('=') ]"
           if "subprotocol" in p.token_transport else "None")
    lines += [
        "",
        "async def main():",
        f"    async with connect({ws_url!r}, additional_headers=HEADERS, subprotocols={sub}) as ws:",
        "        print('subprotocol echoed:', ws.subprotocol)",
        f"        await ws.send(json.dumps({json.loads(message_json(target))!r}))",
        "        try:",
        "            async for message in ws:",
        "                print('<-', message[:200])",
        f"                if json.loads(message).get({p.type_field!r}) == {p.final_event!r}:",
        "                    break",
        "        except Exception as exc:",
        "            print('closed:', exc)",
        "    print('close:', ws.close_code, ws.close_reason)",
        "",
        "asyncio.run(main())",
    ]
    return "\n".join(lines)
