"""The typed, validated configuration: targets, protocol knobs, auth, timeouts and the probe queue.

`load_config()` reads YAML, checks it against the models below and raises `ConfigError` with one line that
names the file, line and field. `${VAR}` references are resolved from the environment only when a target is
selected (`resolve_target`), so a missing variable for an unused target is not an error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SANDBOX = "sandbox"  # base_url value meaning: start the embedded sandbox
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A user error in configuration: the message is one line, fit to print as it is."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Model):
    http: float = Field(5.0, gt=0)
    connect: float = Field(10.0, gt=0)
    ready: float = Field(5.0, gt=0)
    agent: float = Field(30.0, gt=0)
    response: float = Field(2.0, gt=0)
    close: float = Field(3.0, gt=0)


class AuthEndpoint(_Model):
    url: str
    method: Literal["GET", "POST"] = "POST"
    json_body: dict[str, Any] = Field(default_factory=dict)
    token_field: str = "access_token"


class Auth(_Model):
    """Where the token comes from. Secrets are named by env var, never written here."""

    mode: Literal["mint", "env", "endpoint", "none"] = "mint"
    secret_env: str = "JWT_SECRET_KEY"
    token_env: str = "STAGEWATCH_TOKEN"
    algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    ttl_s: int = Field(900, gt=0)
    claims: dict[str, Any] = Field(default_factory=lambda: {
        "sub": "staging-e2e-user-002",
        "email": "staging-e2e-user-002@example.com",
        "permissions": ["read", "write"],
        "token_type": "access",
    })
    endpoint: AuthEndpoint | None = None

    @model_validator(mode="after")
    def _endpoint_needed(self) -> Auth:
        if self.mode == "endpoint" and self.endpoint is None:
            raise ValueError("auth.mode 'endpoint' needs auth.endpoint.url")
        return self


class Protocol(_Model):
    """How the product speaks. Every default matches the embedded sandbox."""

    ws_path: str = "/ws"
    health_paths: list[str] = Field(default_factory=lambda: ["/health"])
    version_field: str = "version"
    expected_version: str | None = None
    echo_headers_path: str | None = None  # an endpoint that reports the headers it received
    token_transport: list[Literal["subprotocol", "header", "query"]] = Field(
        default_factory=lambda: ["subprotocol", "header"])
    subprotocol_template: str = "jwt.{token_b64}"
    subprotocol_padding: bool = False  # True reproduces the illegal padded-base64 form
    extra_subprotocols: list[str] = Field(default_factory=list)
    require_subprotocol_echo: bool = True  # browsers refuse a 101 that does not echo an offered subprotocol
    query_param: str = "token"
    type_field: str = "type"
    ready_type: str = "connection_established"
    message_template: dict[str, Any] = Field(default_factory=lambda: {
        "type": "user_message",
        "payload": {"content": "{text}", "thread_id": None},
    })
    messages: list[str] = Field(default_factory=lambda: [
        "stagewatch probe: what is 2 + 2?", "stagewatch probe: and 3 + 3?"])
    agent_events: list[str] = Field(default_factory=lambda: [
        "agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed"])
    ordered: bool = True
    final_event: str = "agent_completed"
    error_types: list[str] = Field(default_factory=lambda: ["error", "agent_error"])
    response_types: list[str] = Field(default_factory=lambda: [
        "agent_completed", "agent_response", "final_response", "response"])
    response_paths: list[str] = Field(default_factory=lambda: [
        "payload.response", "payload.result.response", "payload.result", "payload.content",
        "payload.message", "data.response", "data.result", "data.content", "response", "content", "result"])
    headers: dict[str, str] = Field(default_factory=lambda: {"X-E2E-Test": "true"})
    max_frame_bytes: int = Field(2**20, gt=0)


StepKind = Literal["http", "auth", "connect", "expect", "send", "expect_events", "close"]


class Step(_Model):
    step: StepKind
    name: str
    # http
    path: str | None = None
    # connect
    token: Literal["default", "none"] = "default"
    expect: Literal["accepted", "refused"] = "accepted"
    # expect
    type: str | None = None
    any_of: list[str] | None = None
    require_text: bool = False
    # send
    text: str | None = None
    message: int = 0
    # timeouts
    timeout: float | None = Field(None, gt=0)


class ProbeDef(_Model):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    name: str = ""
    priority: int = Field(1, ge=0, le=9)
    description: str = ""
    steps: list[Step]

    @field_validator("steps")
    @classmethod
    def _names_unique(cls, steps: list[Step]) -> list[Step]:
        seen: set[str] = set()
        for s in steps:
            if s.name in seen:
                raise ValueError(f"stage name {s.name!r} is used twice")
            seen.add(s.name)
        if not steps:
            raise ValueError("a probe needs at least one step")
        return steps


class Target(_Model):
    base_url: str
    ws_url: str | None = None
    allowed_hosts: list[str] = Field(default_factory=list)  # besides base/ws host, e.g. an auth service
    verify_tls: bool = True
    protocol: dict[str, Any] = Field(default_factory=dict)  # overrides of the top-level protocol
    auth: dict[str, Any] = Field(default_factory=dict)
    timeouts: dict[str, Any] = Field(default_factory=dict)


class Safety(_Model):
    # A host matching none of these looks like production and needs --allow-production.
    non_production_patterns: list[str] = Field(default_factory=lambda: [
        "staging", "localhost", "127.0.0.1", "[::1]", "::1", "dev", "test", "sandbox"])


class Config(_Model):
    default_target: str = SANDBOX
    targets: dict[str, Target]
    protocol: Protocol = Field(default_factory=Protocol)
    auth: Auth = Field(default_factory=Auth)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    safety: Safety = Field(default_factory=Safety)
    probes: list[ProbeDef]
    source: str = Field("<defaults>", exclude=True)

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.default_target not in self.targets:
            raise ValueError(f"default_target {self.default_target!r} is not one of the targets")
        ids = [p.id for p in self.probes]
        dupes = {i for i in ids if ids.count(i) > 1}
        if dupes:
            raise ValueError(f"probe id {sorted(dupes)[0]!r} is used twice")
        return self


class ResolvedTarget(BaseModel):
    """A target with env vars resolved and its sections merged over the top-level defaults."""

    model_config = ConfigDict(frozen=True)
    name: str
    base_url: str  # http(s)://host[:port] or SANDBOX
    ws_url: str | None
    allowed_hosts: tuple[str, ...]
    verify_tls: bool
    protocol: Protocol
    auth: Auth
    timeouts: Timeouts

    @property
    def is_sandbox(self) -> bool:
        return self.base_url == SANDBOX


def interpolate(value: str, env: Mapping[str, str], where: str) -> str:
    """Replace ${VAR} and ${VAR:-default}; a missing variable without a default is a ConfigError."""

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: environment variable {name} is not set")

    return _VAR_RE.sub(sub, value)


def _interpolate_tree(value: Any, env: Mapping[str, str], where: str) -> Any:
    if isinstance(value, str):
        return interpolate(value, env, where)
    if isinstance(value, list):
        return [_interpolate_tree(v, env, where) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate_tree(v, env, f"{where}.{k}") for k, v in value.items()}
    return value


def check_url(url: str, where: str, schemes: tuple[str, ...] = ("http", "https")) -> str:
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(f"{where}: {url!r} is not a valid URL (expected {'/'.join(schemes)}://host[:port])")
    try:
        parts.port
    except ValueError:
        raise ConfigError(f"{where}: {url!r} has an invalid port") from None
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _merge(section: BaseModel, overrides: dict[str, Any], where: str) -> Any:
    try:
        return type(section).model_validate({**section.model_dump(), **overrides})
    except ValidationError as exc:
        raise ConfigError(f"{where}: {_first_error(exc)}") from None


def resolve_target(config: Config, name: str | None = None, *, url: str | None = None,
                   env: Mapping[str, str] | None = None) -> ResolvedTarget:
    """Pick a target (or an ad-hoc one from --url), resolve ${VARs}, merge overrides, check URLs."""
    env = os.environ if env is None else env
    if url is not None:
        where = "--url"
        target = Target(base_url=url)
        name = url
    else:
        name = name or config.default_target
        if name not in config.targets:
            known = ", ".join(sorted(config.targets))
            raise ConfigError(f"{config.source}: no target named {name!r} (targets: {known})")
        target = config.targets[name]
        where = f"{config.source}: targets.{name}"
    base_url = interpolate(target.base_url, env, f"{where}.base_url")
    if base_url != SANDBOX:
        base_url = check_url(base_url, f"{where}.base_url")
    ws_url = interpolate(target.ws_url, env, f"{where}.ws_url") if target.ws_url else None
    if ws_url:
        ws_url = check_url(ws_url, f"{where}.ws_url", ("ws", "wss"))
    return ResolvedTarget(
        name=name,
        base_url=base_url,
        ws_url=ws_url,
        allowed_hosts=tuple(target.allowed_hosts),
        verify_tls=target.verify_tls,
        protocol=_merge(config.protocol, _interpolate_tree(target.protocol, env, f"{where}.protocol"),
                        f"{where}.protocol"),
        auth=_merge(config.auth, _interpolate_tree(target.auth, env, f"{where}.auth"), f"{where}.auth"),
        timeouts=_merge(config.timeouts, target.timeouts, f"{where}.timeouts"),
    )


# --- loading ---------------------------------------------------------------------------------------------

def packaged_config_text() -> str:
    return resources.files("probes").joinpath("default_config.yaml").read_text(encoding="utf-8")


def find_config_path(explicit: str | None = None, env: Mapping[str, str] | None = None) -> Path | None:
    """--config, then $STAGEWATCH_CONFIG, then ./config.yaml; None means the packaged default."""
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit)
    if env.get("STAGEWATCH_CONFIG"):
        return Path(env["STAGEWATCH_CONFIG"])
    local = Path("config.yaml")
    return local if local.is_file() else None


def load_config(path: str | Path | None = None) -> Config:
    """Load and validate a config file (None: the packaged default). Raises ConfigError."""
    if path is None:
        return parse_config(packaged_config_text(), "<packaged config.yaml>")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read config: {exc}") from None
    return parse_config(text, str(p))


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping key, for error messages."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping = loader.construct_mapping(node, deep=True)
    lines = {}
    for key_node, _ in node.value:
        lines[str(loader.construct_object(key_node))] = key_node.start_mark.line + 1
    loader.key_lines[id(mapping)] = (lines, node.start_mark.line + 1)  # type: ignore[attr-defined]
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_config(text: str, source: str) -> Config:
    loader = _LineLoader(text)
    loader.key_lines = {}  # type: ignore[attr-defined]
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}{line}: YAML syntax error: {problem}") from None
    finally:
        loader.dispose()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: the config must be a mapping (key: value), not {type(data).__name__}")
    try:
        return Config.model_validate({**data, "source": source})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS)]
        line = _line_of(data, loc, loader.key_lines)  # type: ignore[attr-defined]
        field = ".".join(str(p) for p in loc) or "(top level)"
        raise ConfigError(f"{source}{f':{line}' if line else ''}: {field}: {_message(err)}") from None


_UNION_TAGS = {"function-after", "function-before", "function-wrap"}


def _message(err: Mapping[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"must be one of {expected} (got {err.get('input')!r})"
    if kind == "missing":
        return "required field is missing"
    msg = str(err.get("msg", "invalid value"))
    return msg.removeprefix("Value error, ")


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"])
    return f"{field}: {_message(err)}" if field else _message(err)


def _line_of(data: Any, loc: list[Any], key_lines: dict[int, tuple[dict[str, int], int]]) -> int | None:
    """The YAML line of the deepest key on `loc` that exists in the parsed document."""
    node, line = data, None
    for part in loc:
        if isinstance(node, dict):
            info = key_lines.get(id(node))
            if info is None:
                break
            lines, start = info
            line = lines.get(str(part), line or start)
            if part not in node:
                break
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            if isinstance(node, dict) and id(node) in key_lines:
                line = key_lines[id(node)][1]
        else:
            break
    return line
