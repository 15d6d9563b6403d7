"""A stage's whole evidence as lines of text: what the stage pane shows for the selected stage, what `c` copies
and what the Markdown report carries for a failing stage. Everything here is already redacted (evidence and
events are); outside text is made visible by the caller's boundary (the report sanitises, the pane uses
`one_line`/`visible`). The engine's own view: no Textual.

- an HTTP stage: each request (method, URL, status, time), the answer's headers and body (pretty JSON, capped),
  the build, and which hop answered;
- `auth`: how the token was had, its subject, issue and expiry (and how long it has left), the token shown only
  as `eyJhbGciOi…` + 4;
- `connect`: the upgrade as sent (URL, every header we set, the subprotocols offered), the answer (status,
  headers, the subprotocol echoed or not, a refusal's body) and the hop;
- a frame stage: its frames with the gap before each (from the probe's last frames);
- a failed stage: the lines its diagnosis cites.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from .events import Frame
from .frames import classify
from .model import ProbeModel, StageModel

BODY_CHARS = 2000
CREDENTIAL_HEADERS = {"authorization", "sec-websocket-protocol", "cookie"}
SKIP_FIELDS = {"kind", "request_headers", "response_headers", "body", "hop", "echo", "timing"}


def timing_words(timing: dict[str, Any] | None) -> str:
    """'dns 0.1 ms · tcp 0.3 ms · tls 4.2 ms · upgrade 2.0 ms' (TLS only for wss)."""
    if not timing:
        return ""
    parts = [f"{k[:-3]} {v:.1f} ms" for k, v in timing.items() if k.endswith("_ms") and isinstance(v, (int, float))]
    return " · ".join(parts)


def _pretty(body: str) -> str:
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)[:BODY_CHARS]
    except ValueError:
        return body[:BODY_CHARS]


def _body(body: str) -> list[str]:
    """A body: one line when it is short (a refusal's `{"detail": "missing token"}`), else pretty JSON, capped."""
    if not body:
        return []
    one = " ".join(body.split())
    if len(one) <= 100:
        return [f"body: {one}"]
    return ["body:", *("  " + line for line in _pretty(body).splitlines())]


def _headers(title: str, headers: dict[str, str]) -> list[str]:
    if not headers:
        return []
    return [title, *(f"  {k}: {v}" for k, v in headers.items())]


def _hop(record: Any) -> list[str]:
    if not isinstance(record, dict) or not record.get("name"):
        return []
    how = "answered by" if record.get("produced") else "through"
    return [f"hop: {how} {record['name']} ({record.get('kind')}): {record.get('why')}"]


def _stage_end(stage: StageModel, now_t: float | None) -> float | None:
    if stage.started_t is None:
        return None
    if stage.duration_ms is not None:
        return stage.started_t + stage.duration_ms / 1000.0
    return now_t if stage.status == "running" else stage.started_t


def _stage_frames(probe: ProbeModel, stage: StageModel, frames: Iterable[Frame] | None,
                  now_t: float | None) -> tuple[list[Frame], float | None]:
    """The frames of `stage`, by when each came or went on the session's clock (the frame's own `t`): after the
    stage before it ended and by the time this one ended (a frame that arrives between stages is the next stage's:
    that stage reads it); for the first stage after the upgrade, every frame up to its end. All the probe's last
    frames when the stage has not started. Also the stage's start (session seconds)."""
    every = [f for f in (probe.last_frames if frames is None else frames) if isinstance(f, Frame)]
    end = _stage_end(stage, now_t)
    if stage.started_t is None:
        return every, None
    order = list(probe.stages.values())
    before = order[order.index(stage) - 1] if stage in order and order.index(stage) > 0 else None
    low = _stage_end(before, now_t) if before is not None and before.step != "connect" else None
    mine = [f for f in every if (low is None or f.t > low) and (end is None or f.t <= end)]
    wanted = getattr(stage.evidence, "frame_type", None)
    if not mine and wanted and stage.status == "pass":  # it read a frame that came earlier (the response in the
        for f in reversed(every):  # agent's last event): the newest of its type, looked for from the end only
            if f.direction == "in" and (end is None or f.t <= end) and classify(f.data).type == wanted:
                mine = [f]
                break
    return mine, stage.started_t


def _event_axis(frames: list[Frame], started_t: float, limit_s: float | None, took_ms: float | None,
                width: int = 32) -> list[str]:
    """The stage's time on one axis: a tick where each incoming event came and `◆` where the stage ended, and how
    much of its limit it used (a stage stuck near its limit shows as a long empty run before `◆`)."""
    at = [((f.t - started_t) * 1000.0, f.direction) for f in frames]
    span = max(took_ms or 0.0, max((ms for ms, _ in at), default=0.0), 1.0)
    row = ["─"] * width
    for ms, direction in at:
        if direction == "in":
            row[min(width - 1, max(0, int(ms / span * width)))] = "┃"
    if took_ms is not None:
        row[min(width - 1, int(took_ms / span * width))] = "◆"
    took = f"{span / 1000:.1f} s" if span >= 10_000 else f"{span:.0f} ms"
    used = f" ({span / (limit_s * 1000.0):.0%} of {limit_s:g} s)" if limit_s else ""
    return ["", "time axis (┃ an event, ◆ the stage ended):", f"  0 {''.join(row)} {took}{used}"]


def stage_lines(probe: ProbeModel, stage: StageModel, now: float | None = None,
                frames: Iterable[Frame] | None = None, now_t: float | None = None) -> list[str]:
    """Every line of what `stage` of `probe` saw (see the module's docstring). `frames`: a longer frame history
    than the probe's last ones (the app's buffer); `now_t`: session seconds, for a running stage."""
    now = time.time() if now is None else now
    took = "" if stage.duration_ms is None else f" in {stage.duration_ms:.1f} ms"
    limit = f" (limit {stage.limit_s:g} s)" if stage.limit_s else ""
    kind_words = f" ({stage.step})" if stage.step else ""  # (a stage not started yet: its kind is not known)
    lines = [f"{stage.name}{kind_words}: {stage.status}{took}{limit}"
             + (" — not started yet" if stage.status == "queued" else "")]
    if stage.detail:
        lines.append(f"  {stage.detail}")
    record = stage.evidence.to_record() if stage.evidence is not None else {}
    kind = record.get("kind", stage.step)
    if kind == "http":
        for x in (h for h in probe.http if h.stage == stage.name):
            lines += ["", f"{x.method} {x.url} → {x.status if x.status is not None else x.error} "
                      f"({x.elapsed_ms:.1f} ms)"]
            lines += _headers("response headers:", x.headers)
            if x.body_excerpt:
                lines += ["body:", *("  " + line for line in _pretty(x.body_excerpt).splitlines())]
        lines += _hop(record.get("hop"))
    elif kind == "auth":
        exp, iat = record.get("exp"), record.get("iat")
        lines += ["", f"token: {record.get('token') or '(none)'}", f"from: {record.get('source') or '?'}",
                  f"sub: {record.get('sub')}"]
        if record.get("transports"):
            lines.append(f"offered on: {', '.join(record['transports'])} (the connect's token transports)")
        if record.get("header"):
            lines.append("header: " + json.dumps(record["header"], ensure_ascii=False, sort_keys=True))
        if record.get("claims"):
            lines += ["claims (signature never shown):",
                      *(f"  {k}: {json.dumps(v, ensure_ascii=False)}" for k, v in sorted(record["claims"].items()))]
        if iat:
            lines.append(f"issued: {time.strftime('%H:%M:%S', time.localtime(iat))}")
        if exp:
            left = exp - now
            lines.append(f"expires: {time.strftime('%H:%M:%S', time.localtime(exp))} "
                         f"({'in ' + str(int(left)) + ' s' if left > 0 else 'EXPIRED ' + str(int(-left)) + ' s ago'})")
    elif kind == "connect":
        opened = probe.opened if probe.opened is not None and stage.status == "pass" else None
        sent = opened.request_headers if opened is not None else record.get("request_headers") or {}
        status = record.get("http_status")
        refused = status is not None and status != 101
        if refused:  # what carried the credentials first: the headers a proxy strips are the question
            sent = dict(sorted(sent.items(), key=lambda kv: kv[0].lower() not in CREDENTIAL_HEADERS))
        request = ["" if not refused else None, f"upgrade as sent: GET {record.get('url') or '?'} HTTP/1.1",
                   *(f"  {k}: {v}" for k, v in sent.items())]
        if record.get("subprotocol_offered"):
            request.append(f"subprotocol offered: {record['subprotocol_offered']}")
        answer = ["", f"answer: HTTP {status if status is not None else '(none)'}"]
        if status == 101:
            echoed = record.get("subprotocol_echoed")
            answer.append(f"subprotocol echoed: {echoed}" if echoed else "subprotocol echoed: NO")
        body = _body(record.get("body") or "")
        if refused:  # the refusal and its body first, then what we sent, then the rest of the answer
            lines += answer + body + [line for line in request if line is not None] + \
                _headers("response headers:", record.get("response_headers") or {})
        else:
            lines += [line for line in request if line is not None] + answer + \
                _headers("response headers:", record.get("response_headers") or {}) + body
        lines += _hop(record.get("hop"))
        timing = record.get("timing") or {}
        if timing:
            lines += ["", f"timing: {timing_words(timing)}"]
            if timing.get("tls_version"):
                lines.append(f"tls: {timing['tls_version']} {timing.get('tls_cipher', '')}".rstrip())
            if timing.get("cert_subject"):
                trust = ("verified" if timing.get("cert_verified") else "NOT verified (--insecure)")
                if timing.get("cert_self_signed"):
                    trust += ", self-signed"
                lines += [f"certificate: {timing['cert_subject']}",
                          f"  issuer {timing.get('cert_issuer')} · expires {timing.get('cert_expires')} · {trust}"]
    else:
        mine, started_t = _stage_frames(probe, stage, frames, now_t)
        if stage.step in ("expect", "send", "expect_events"):
            if stage.step == "expect_events" and started_t is not None and stage.status not in ("skip", "queued"):
                lines += _event_axis(mine, started_t, stage.limit_s, stage.duration_ms)
            title = "this stage's frames" if started_t is not None else "frames (the probe's last ones)"
            lines += ["", f"{title} (ms after the upgrade, the gap before each):" if mine else f"{title}: none"]
            last: float | None = None
            for f in mine:  # the first one's gap: from the stage's start; then from the frame before
                since = (f.t - started_t) * 1000.0 if last is None and started_t is not None else \
                    (f.ms - last if last is not None else None)
                gap = "" if since is None else f" (+{max(0.0, since):.0f} ms)"
                last = f.ms
                arrow = "→" if f.direction == "out" else "←"
                lines.append(f"  {f.ms:8.1f} ms{gap:>10} {arrow} {f.size:6d} B  {classify(f.data).summary}")
    extra = [f"{k}: {v}" for k, v in record.items() if k not in SKIP_FIELDS and v not in (None, "", False, [], {})]
    if extra and kind not in ("auth",):
        lines += ["", "evidence:", *("  " + e for e in extra)]
    if stage.status in ("fail", "error") and probe.failed is stage and probe.diagnoses:
        d = probe.diagnoses[0]  # the verdict and what it rests on
        cited = [f"diagnosis {d.get('code')}: {d.get('summary')}", *(f"  · {e}" for e in d.get("evidence", []))]
        if d.get("next_step"):
            cited.append(f"  next: {d['next_step']}")
        lines += ["", *cited]  # (the Diagnosis pane says it too: the stage's own evidence comes first)
    return lines


def waterfall_lines(probe: ProbeModel, width: int = 40, now_t: float | None = None,
                    frames: Iterable[Frame] | None = None) -> list[str]:
    """The probe's stages as bars on one time axis (a browser's network view): where each stage began and how long
    it took; a running stage grows to `now_t` (session seconds). Empty when nothing has started."""
    spans: list[tuple[str, float, float, str]] = []
    for stage in probe.stages.values():
        if stage.started_t is None:
            continue
        if stage.duration_ms is not None:
            end = stage.started_t + stage.duration_ms / 1000.0
        elif stage.status == "running" and now_t is not None:
            end = max(stage.started_t, now_t)
        else:
            end = stage.started_t
        spans.append((stage.name, stage.started_t, end, stage.status))
    if not spans:
        return []
    t0 = min(s for _, s, _, _ in spans)
    total = max(max(e for _, _, e, _ in spans) - t0, 1e-6)
    name_w = max(8, max(len(n) for n, _, _, _ in spans))
    lines = [f"{'':<{name_w}}  0{'':<{max(0, width - 8)}}{total * 1000:>6.0f} ms"]

    def bar(label: str, start: float, end: float, mark: str) -> str:
        left = min(width - 1, int((start - t0) / total * width))
        size = max(1, round((end - start) / total * width)) if end > start else 1
        size = min(size, width - left) or 1
        return f"{label:<{name_w}}  {' ' * left}{mark * size}{' ' * (width - left - size)}  " \
               f"{(end - start) * 1000:7.1f} ms"

    for name, start, end, status in spans:
        lines.append(bar(name, start, end, {"fail": "▓", "error": "▓", "running": "▒", "skip": "·"}.get(status, "█")))
        if probe.stages[name].step == "expect_events":  # each event a tick where it came (its own session time)
            row = [" "] * width
            for f in probe.last_frames if frames is None else frames:
                if isinstance(f, Frame) and f.direction == "in":
                    at = f.t
                    if start <= at <= max(end, start):
                        row[min(width - 1, int((at - t0) / total * width))] = "|"
            if "|" in row:
                lines.append(f"{' events':<{name_w}}  {''.join(row)}")
        timing = getattr(probe.stages[name].evidence, "timing", None)
        if isinstance(timing, dict) and timing:  # the connect's split, each part where it fell
            at = start
            for part in ("dns", "tcp", "tls", "upgrade"):
                ms = timing.get(f"{part}_ms")
                if isinstance(ms, (int, float)):
                    lines.append(bar(f" {part}", at, at + ms / 1000.0, "▪"))
                    at += ms / 1000.0
    return lines
