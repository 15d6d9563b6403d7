"""W3C Trace Context for probes, without an OpenTelemetry dependency: the engine names a trace per probe run and a
span per stage (random ids, hex as the `traceparent` header writes them), the steps send `traceparent` on the
requests a stage makes (health, the auth endpoint, the WebSocket upgrade), so a backend's own spans join the
probe's trace; `probes.otel` later builds the real spans with these same ids from the events. Also where those
spans go (`resolve_endpoint`: --otlp or the standard OTEL_EXPORTER_OTLP_* variables), known without the extra.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

DEFAULT_ENDPOINT = "http://localhost:4318/v1/traces"  # an OpenTelemetry Collector's OTLP/HTTP receiver
TRACES_PATH = "/v1/traces"
ENV_TRACES = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
ENV_BASE = "OTEL_EXPORTER_OTLP_ENDPOINT"
VERSION = "00"
SAMPLED = "01"  # trace-flags: the probe records every span it names


def _hex(nbytes: int) -> str:
    while True:
        value = os.urandom(nbytes).hex()
        if value.strip("0"):  # all zeros is the invalid id
            return value


def new_trace_id() -> str:
    """32 lower-case hex digits, never all zero."""
    return _hex(16)


def new_span_id() -> str:
    """16 lower-case hex digits, never all zero."""
    return _hex(8)


def traceparent(trace_id: str, span_id: str) -> str:
    """`00-<trace id>-<parent span id>-01`."""
    return f"{VERSION}-{trace_id}-{span_id}-{SAMPLED}"


def parse_traceparent(value: str) -> tuple[str, str] | None:
    """(trace id, parent span id) of a version-00 `traceparent` value, or None when it is not one."""
    parts = value.strip().lower().split("-")
    if len(parts) != 4 or parts[0] != VERSION or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    if any(c not in "0123456789abcdef" for c in "".join(parts)) or not parts[1].strip("0") or not parts[2].strip("0"):
        return None
    return parts[1], parts[2]


def endpoint_from_env(env: Mapping[str, str]) -> str | None:
    """The traces endpoint the standard variables name (the traces one as given, the base one + /v1/traces), or
    None when neither is set (or OTEL_SDK_DISABLED is true)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    traces = env.get(ENV_TRACES, "").strip()
    if traces:
        return traces
    base = env.get(ENV_BASE, "").strip()
    return base.rstrip("/") + TRACES_PATH if base else None


def resolve_endpoint(given: str | None, env: Mapping[str, str]) -> str:
    """Where the spans go: `--otlp URL` (a URL without a path gets /v1/traces), else the standard variables, else
    a local collector. ValueError with one line for a URL that is not http(s)."""
    if given:
        url = given.strip()
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and parts.path in ("", "/"):
            url = url.rstrip("/") + TRACES_PATH
    else:
        url = endpoint_from_env(env) or DEFAULT_ENDPOINT
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--otlp: {url!r} is not an http(s) URL of an OTLP/HTTP receiver "
                         f"(e.g. {DEFAULT_ENDPOINT})")
    return url
