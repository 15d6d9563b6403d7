"""What a flip sets off besides the screen: `--on-change CMD` receives the flip as one JSON object on stdin (for a
chat webhook through curl). The command runs without a shell's help from us (it is the user's own command line,
run by /bin/sh as they wrote it), with a deadline, its output discarded; a failure is one line, never an exception.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import orjson

from .sanitize import one_line
from .watch import Flip, History, iso

ON_CHANGE_DEADLINE_S = 10.0


def flip_payload(flip: Flip, history: History, target: str) -> dict[str, Any]:
    """The flip, with the outage it ends (if any) and the round's build: what a webhook needs in one object."""
    payload: dict[str, Any] = {"target": target, **flip.record()}
    if flip.before == "DOWN":  # the outage this flip ends
        ended = next((o for o in reversed(history.outages) if o.probe == flip.probe and o.end is not None
                      and o.first_round <= flip.round), None)
        if ended is not None:
            payload["outage"] = ended.record()
    mon_outage = next((o for o in reversed(history.outages) if o.probe == flip.probe and o.end is None), None)
    if flip.after == "DOWN" and mon_outage is not None:
        payload["down_since"] = iso(mon_outage.start)
    text = next((c.text for c in reversed(history.timeline) if c.round == flip.round and
                 (c.probe == flip.probe or flip.probe in c.probes)), None)
    if text:
        payload["text"] = f"{target}: {text}"
    return payload


async def run_on_change(command: str, payload: dict[str, Any], deadline: float = ON_CHANGE_DEADLINE_S) -> str | None:
    """Run `command` with `payload` as JSON on stdin. None when it exited 0; else one line saying what went wrong."""
    data = orjson.dumps(payload) + b"\n"
    try:
        proc = await asyncio.create_subprocess_shell(
            command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        return f"--on-change could not start: {exc.strerror or exc}"
    try:
        async with asyncio.timeout(deadline):
            _, err = await proc.communicate(data)
    except TimeoutError:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        await proc.wait()
        return f"--on-change did not finish within {deadline:g} s; killed"
    if proc.returncode != 0:
        last = (err or b"").decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        return f"--on-change exited {proc.returncode}" + (f": {one_line(last[0])[:200]}" if last[0] else "")
    return None
