"""`http`: GET the health endpoint(s) (or the step's `path`); 2xx, and the build it reports when one is expected."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..config import Step
from ..context import ProbeContext, StageFailed
from ..events import HttpExchange
from ..evidence import StepEvidence
from ..frames import get_path, parse_json
from ..hops import identify, words
from ..net import BODY_KEEP, BodyBomb, BodyTooLarge, bounded_request, http_error, ms_since
from .base import StepKind


@dataclass(slots=True, kw_only=True)
class HttpEvidence(StepEvidence):
    kind = "http"
    url: str = ""
    http_status: int | None = None
    location: str | None = None  # a redirect's target
    version: str | None = None  # the build health reports
    expected_version: str | None = None
    version_missing: bool = False  # a build was expected; health names none
    body: str = ""  # an excerpt, when it explains the failure
    hop: dict[str, Any] | None = None  # who answered (probes/hops.py): the backend, or a named proxy


class Http(StepKind):
    name = "http"
    evidence = HttpEvidence

    def per_path(self, step: Step, ctx: ProbeContext) -> float:
        return step.timeout or ctx.timeouts.http

    def paths(self, step: Step, ctx: ProbeContext) -> list[str]:
        return [step.path] if step.path else list(ctx.protocol.health_paths)

    def limit(self, step: Step, ctx: ProbeContext) -> float:
        return self.per_path(step, ctx) * len(self.paths(step, ctx))

    async def run(self, step: Step, ctx: ProbeContext, limit: float) -> tuple[str, HttpEvidence]:
        p = ctx.protocol
        details: list[str] = []
        versions: list[str] = []
        expected = ctx.run.expected_version or p.expected_version
        for path in self.paths(step, ctx):
            url = ctx.run.base_url + path
            resp = await self._get(step, ctx, url)
            hop = identify(resp.headers.multi_items(), resp.content[:BODY_KEEP].decode("utf-8", "replace"))
            ev = HttpEvidence(url=url, http_status=resp.status_code, expected_version=expected,
                              hop=ctx.run.redactor.tree(hop))
            if not 200 <= resp.status_code < 300:
                location = resp.headers.get("location")
                ev.location = location
                by = words(hop)
                raise StageFailed(f"GET {path}: HTTP {resp.status_code} {resp.reason_phrase}"
                                  + (f" → {ctx.redact(location)}" if location else "")
                                  + (f" · {ctx.redact(by)}" if by else ""), evidence=ev)
            version = version_of(parse_json(resp.text), p.version_field)
            ev.version = version
            if version is not None:
                versions.append(version)
            details.append(f"GET {path} {resp.status_code}" + (f" · version {version}" if version else ""))
            if expected and version is not None and version != expected:
                raise StageFailed(f"GET {path}: build {version} is deployed, expected {expected}", evidence=ev)
            if expected and version is None:
                ev.version_missing, ev.body = True, ctx.redact(resp.text[:200])
                raise StageFailed(f"GET {path}: no '{p.version_field}' field to compare with {expected}",
                                  evidence=ev)
        return " · ".join(details), HttpEvidence(url=ev.url, http_status=ev.http_status, hop=ev.hop,
                                                 version=versions[0] if versions else None, expected_version=expected)

    async def _get(self, step: Step, ctx: ProbeContext, url: str) -> httpx.Response:
        ctx.run.check_host(url)
        assert ctx.run.http is not None
        limit = self.per_path(step, ctx)
        start = time.monotonic()
        where = urlsplit(url).path or "/"
        try:
            resp = await bounded_request(ctx.run.http, "GET", url, limit,
                                         headers={**ctx.protocol.headers, **ctx.trace_headers()})
        except BodyTooLarge as exc:
            error = "bomb" if isinstance(exc, BodyBomb) else "too-large"
            ctx.emit(HttpExchange(ctx.t(), ctx.probe_id, step.name, "GET", url, exc.status, {}, "", ms_since(start),
                                  f"{error}: {exc}"))
            raise StageFailed(f"GET {where}: {exc}", evidence=HttpEvidence(error=error, url=url)) from None
        except httpx.HTTPError as exc:
            kind, text = http_error(exc, limit)
            ctx.emit(HttpExchange(ctx.t(), ctx.probe_id, step.name, "GET", url, None, {}, "", ms_since(start),
                                  f"{kind}: {text}"))
            raise StageFailed(f"GET {where}: {text}", evidence=HttpEvidence(
                error=kind, timeout=kind == "timeout", url=url)) from None
        body = resp.content[:BODY_KEEP].decode("utf-8", "replace")
        ctx.emit(HttpExchange(ctx.t(), ctx.probe_id, step.name, "GET", url, resp.status_code,
                              ctx.run.redactor.headers(resp.headers.multi_items()), ctx.redact(body),
                              ms_since(start)))
        return resp


_BUILD_NAMES = ("version", "build", "build_id", "commit", "git_sha", "sha", "revision", "release")


def version_of(value: Any, field_path: str) -> str | None:
    """The build a health answer names: the configured field, else the usual names, one level deep too
    (`{"build": {"version": "v3"}}`)."""
    for path in (field_path, *_BUILD_NAMES):
        v = get_path(value, path)
        if isinstance(v, dict):
            v = next((v[k] for k in ("version", "id", *_BUILD_NAMES) if _scalar(v.get(k))), None)
        if _scalar(v):
            return str(v)
    return None


def _scalar(v: Any) -> bool:
    return isinstance(v, (str, int, float)) and not isinstance(v, bool) and bool(str(v))
