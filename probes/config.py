"""The typed, validated configuration: targets, protocol knobs, auth, timeouts and the probe queue.

`load_config()` reads YAML, checks it against the models below and raises `ConfigError` with one line that
names the file, line and field ("config.yaml:12: protocol.wspath: unknown key (did you mean 'ws_path'?)").
Syntax errors, duplicate keys and absurd nesting are ConfigErrors too, never tracebacks. A target's protocol,
auth and timeouts overrides are checked when the file is loaded, except values that hold a `${VAR}`.

Loading is bounded: a file over 1 MiB is refused before it is read, and a document of more than 20,000 YAML
nodes, counted with every alias expanded (a "billion laughs" bomb is a few lines), is refused before it is
built. A ConfigError's message is always one line with control characters shown as escapes (`\\x1b`), since it
may quote the file.

`${VAR}` references are resolved from the environment only when a target is selected (`resolve_target`), so a
missing variable for an unused target is not an error. Resolving also checks every URL (scheme, host, port, no
credentials in it) and that an auth endpoint, which receives a credentials request, is on one of the target's
hosts (base_url, ws_url or allowed_hosts).
"""

from __future__ import annotations

import difflib
import os
import re
import string
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin
from urllib.parse import urlsplit, urlunsplit

import yaml
from yaml.error import Mark, MarkedYAMLError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from .durations import parse_duration
from .sanitize import one_line

SANDBOX = "sandbox"  # base_url value meaning: start the embedded sandbox
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.:-]+)$")  # a host name or address, not a URL
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A user error in configuration: the message is one line, fit to print as it is (it may quote the file, so
    control characters, line breaks included, are made visible here)."""

    def __init__(self, message: str) -> None:
        super().__init__(_short(one_line(message), 1000))


class LocatedError(ValueError):
    """A validation error that knows the key path (below the validated field) it is about."""

    def __init__(self, message: str, loc: tuple[str | int, ...]) -> None:
        super().__init__(message)
        self.loc = loc


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Model):
    http: float = Field(5.0, gt=0)
    connect: float = Field(10.0, gt=0)
    ready: float = Field(5.0, gt=0)
    agent: float = Field(30.0, gt=0)
    response: float = Field(2.0, gt=0)
    send: float = Field(5.0, gt=0)
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


TokenTransport = Literal["subprotocol", "header", "query"]


def _default_transport() -> list[TokenTransport]:
    return ["subprotocol", "header"]


class Protocol(_Model):
    """How the product speaks. Every default matches the embedded sandbox."""

    ws_path: str = "/ws"
    health_paths: list[str] = Field(default_factory=lambda: ["/health"])
    version_field: str = "version"
    expected_version: str | None = None
    echo_headers_path: str | None = None  # an endpoint that reports the headers it received
    token_transport: list[TokenTransport] = Field(default_factory=_default_transport)
    subprotocol_template: str = "jwt.{token_b64}"
    subprotocol_padding: bool = False  # True reproduces the illegal padded-base64 form
    extra_subprotocols: list[str] = Field(default_factory=list)
    require_subprotocol_echo: bool = True  # browsers refuse a 101 that does not echo an offered subprotocol
    # an upgrade answered 3xx is evidence, not followed; true: followed only to the target's own hosts
    follow_upgrade_redirects: bool = False
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
        "agent_completed", "agent_response", "final_response", "response", "message", "assistant_message"])
    response_paths: list[str] = Field(default_factory=lambda: [
        "payload.response", "payload.result.response", "payload.result", "payload.content", "payload.message",
        "payload.text", "data.response", "data.result", "data.content", "data.message", "data.text", "response",
        "content", "result", "text", "message"])
    headers: dict[str, str] = Field(default_factory=lambda: {"X-E2E-Test": "true"})
    max_frame_bytes: int = Field(2**20, gt=0)

    @field_validator("subprotocol_template")
    @classmethod
    def _template_fields(cls, template: str) -> str:
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        except ValueError as exc:
            raise ValueError(f"not a valid template: {exc}") from None
        unknown = names - {"token", "token_b64"}
        if unknown:
            raise ValueError(f"unknown placeholder {{{min(unknown)}}} (use {{token_b64}} or {{token}})")
        return template

    @field_validator("headers")
    @classmethod
    def _header_values(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not _HEADER_NAME_RE.match(name):
                raise LocatedError(f"{name!r} is not a valid header name", (name,))
            if any(ch in value for ch in "\r\n\0"):
                raise LocatedError("a header value cannot contain a line break", (name,))
        return headers


def _first_repeat(values: list[str]) -> int | None:
    """The index of the first value that already came earlier in the list."""
    seen: set[str] = set()
    for index, value in enumerate(values):
        if value in seen:
            return index
        seen.add(value)
    return None


StepKind = Literal["http", "auth", "connect", "expect", "send", "expect_events", "close", "hold"]


def _seconds(value: Any) -> Any:
    """A duration as the config may write it: 15, 15s, 500ms, 10m, 1h."""
    if isinstance(value, str):
        return parse_duration(value.strip())
    return value


Seconds = Annotated[float, BeforeValidator(_seconds)]


class Step(_Model):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
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
    # watch: a pass slower than this is DEGRADED (default: watch.degraded_ms)
    degraded_ms: float | None = Field(None, gt=0)
    # hold: K sessions kept open `for` a while, pinged every `heartbeat`, the message sent every `message_every`
    sessions: int | None = Field(None, ge=1, le=50_000)
    hold_for: Seconds | None = Field(None, alias="for", gt=0, le=7 * 86400)
    heartbeat: Seconds | None = Field(None, gt=0)
    message_every: Seconds | None = Field(None, gt=0)
    reconnect: bool = False
    stagger: Seconds | None = Field(None, ge=0)  # the opens spread over this long (default: one heartbeat, ≤ 10 s)


class ProbeDef(_Model):
    """A queue entry: a probe (its `steps`), or `kind: pytest`, your own suite run with its `args` — its tests join
    the queue, each at its own priority (the `pytest:` section maps markers and names to priorities)."""
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    kind: Literal["probe", "pytest"] = "probe"
    name: str = ""
    priority: int = Field(1, ge=0, le=9)
    description: str = ""
    args: list[str] = Field(default_factory=list)  # kind pytest: pytest's arguments (paths, -k, -n 2 …)
    steps: list[Step] = Field(default_factory=list)

    @field_validator("steps")
    @classmethod
    def _names_unique(cls, steps: list[Step]) -> list[Step]:
        index = _first_repeat([s.name for s in steps])
        if index is not None:
            raise LocatedError(f"stage name {steps[index].name!r} is used twice in this probe", (index, "name"))
        return steps

    @model_validator(mode="after")
    def _kind_fits(self) -> ProbeDef:
        if self.kind == "probe" and not self.steps:
            raise LocatedError("a probe needs at least one step (or `kind: pytest` with `args`)", ("steps",))
        if self.kind == "pytest" and self.steps:
            raise LocatedError("an entry of kind pytest runs its suite (`args`), it has no steps", ("steps",))
        if self.kind == "probe" and self.args:
            raise LocatedError("`args` are for an entry of kind pytest", ("args",))
        return self


class Target(_Model):
    base_url: str
    ws_url: str | None = None
    allowed_hosts: list[str] = Field(default_factory=list)  # besides base/ws host, e.g. an auth service
    verify_tls: bool = True
    protocol: dict[str, Any] = Field(default_factory=dict)  # overrides of the top-level protocol
    auth: dict[str, Any] = Field(default_factory=dict)
    timeouts: dict[str, Any] = Field(default_factory=dict)

    @field_validator("allowed_hosts")
    @classmethod
    def _plain_hosts(cls, hosts: list[str]) -> list[str]:
        for index, host in enumerate(hosts):
            if not _HOST_RE.match(host):
                raise LocatedError(f"give a host name such as auth.example.com, not {host!r}", (index,))
        return hosts


class Safety(_Model):
    # A host matching none of these looks like production and needs --allow-production.
    non_production_patterns: list[str] = Field(default_factory=lambda: [
        "staging", "localhost", "127.0.0.1", "[::1]", "::1", "dev", "test", "sandbox"])


class Watch(_Model):
    """Monitor semantics of a watch (rounds of the queue): DOWN after `confirm` failures in a row, DEGRADED when a
    passing stage is slower than its `degraded_ms`, UP after one pass."""
    interval_s: float = Field(10.0, ge=0.05)  # between rounds (--watch overrides)
    confirm: int = Field(2, ge=1, le=100)  # consecutive failing rounds before a probe is DOWN (PENDING until then)
    degraded_ms: float | None = Field(None, gt=0)  # a stage's default threshold; a step's own degraded_ms wins
    keep_rounds: int = Field(100, ge=1, le=10_000)  # rounds kept whole (stages, frames, close, diagnosis)
    keep_summaries: int = Field(20_000, ge=1, le=1_000_000)  # older rounds kept as one-line summaries
    bell: bool = True  # the terminal bell on a flip (--no-bell)


class Recording(_Model):
    """Rotation and retention of recordings: a day of watching at 10 s stays well under a gigabyte."""
    max_file_mb: float = Field(25.0, gt=0, le=10_000)  # a recording rotates to a new part past this size
    keep_files: int = Field(40, ge=1, le=100_000)  # recordings kept in the recordings folder (newest first)
    keep_days: float = Field(7.0, gt=0)  # older recordings in that folder are removed


Priority = Annotated[int, Field(ge=0, le=9)]


class PytestSuite(_Model):
    """Your own pytest suite in the queue (`stagewatch run --pytest`, `stagewatch pytest`): each test's priority
    from its markers or its name, and how much the plugin reports per test."""
    # marker name -> priority; a test takes the most urgent (lowest) of its markers' and matching patterns'
    markers: dict[str, Priority] = Field(default_factory=lambda: {
        "smoke": 0, "critical": 1, "priority1": 1, "priority2": 2, "priority3": 3})
    # fnmatch pattern on the test's name, its file's name or its node id -> priority
    patterns: dict[str, Priority] = Field(default_factory=lambda: {"test_priority1_*": 1})
    default_priority: Priority = 2  # a test nothing maps
    max_frames: int = Field(500, ge=0, le=100_000)  # WebSocket frames shown per test (all are counted)
    frame_bytes: int = Field(8192, ge=64, le=2**20)  # bytes of each frame shown (the size is always exact)
    longrepr_chars: int = Field(4000, ge=200, le=100_000)  # pytest's failure text kept per phase (its end)

    @field_validator("markers", "patterns")
    @classmethod
    def _names(cls, mapping: dict[str, int]) -> dict[str, int]:
        for name in mapping:
            if not name.strip():
                raise ValueError("a marker or pattern cannot be empty")
        return mapping


class Config(_Model):
    default_target: str = SANDBOX
    targets: dict[str, Target]
    protocol: Protocol = Field(default_factory=Protocol)
    auth: Auth = Field(default_factory=Auth)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    safety: Safety = Field(default_factory=Safety)
    watch: Watch = Field(default_factory=Watch)
    recording: Recording = Field(default_factory=Recording)
    pytest: PytestSuite = Field(default_factory=PytestSuite)
    probes: list[ProbeDef]
    source: str = Field("<defaults>", exclude=True)

    _lines: dict[str, int] = PrivateAttr(default_factory=dict)  # dotted key path -> YAML line

    @field_validator("probes")
    @classmethod
    def _ids_unique(cls, probes: list[ProbeDef]) -> list[ProbeDef]:
        index = _first_repeat([p.id for p in probes])
        if index is not None:
            raise LocatedError(f"probe id {probes[index].id!r} is used twice", (index, "id"))
        return probes

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.default_target not in self.targets:
            known = ", ".join(sorted(self.targets))
            raise LocatedError(f"{self.default_target!r} is not one of the targets ({known})", ("default_target",))
        return self

    def where(self, path: str) -> str:
        """'file:line: path' for a dotted key path, with the line of its deepest key present in the YAML."""
        parts = path.split(".")
        for end in range(len(parts), 0, -1):
            line = self._lines.get(".".join(parts[:end]))
            if line is not None:
                return f"{self.source}:{line}: {path}"
        return f"{self.source}: {path}"


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


Locate = Callable[[str], str]  # dotted key path -> "file:line: path"


def _interpolate_tree(value: Any, env: Mapping[str, str], path: str, locate: Locate) -> Any:
    if isinstance(value, str):
        return interpolate(value, env, locate(path))
    if isinstance(value, list):
        return [_interpolate_tree(v, env, f"{path}.{i}", locate) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _interpolate_tree(v, env, f"{path}.{k}", locate) for k, v in value.items()}
    return value


def check_url(url: str, where: str, schemes: tuple[str, ...] = ("http", "https")) -> str:
    """The URL normalised (no query, no trailing slash); a ConfigError naming `where` when it is not usable."""
    expected = f"expected {'/'.join(schemes)}://host[:port]"
    if not url or any(ch.isspace() or not ch.isprintable() for ch in url):
        raise ConfigError(f"{where}: {url!r} is not a valid URL ({expected})")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(f"{where}: {url!r} has an invalid host or port") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(f"{where}: {url!r} is not a valid URL ({expected})")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{where}: credentials in a URL would be printed and recorded; remove the 'user@' part "
                          "(the token comes from the auth settings)")
    if port == 0:
        raise ConfigError(f"{where}: {url!r} has an invalid port")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _merge(section: BaseModel, overrides: dict[str, Any], path: str, locate: Locate) -> Any:
    """`section` with `overrides` applied, validated; errors name the overriding key and its line."""
    try:
        return type(section).model_validate({**section.model_dump(), **overrides})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{locate(f'{path}.{loc}' if loc else path)}: {_message(err)}") from None


def _resolved_section(config: Config, name: str, env: Mapping[str, str]) -> BaseModel:
    """A top-level section (protocol, auth) with its own ${VAR}s resolved; unchanged when it has none."""
    section: BaseModel = getattr(config, name)
    data = section.model_dump()
    if "${" not in repr(data):
        return section
    resolved: BaseModel = _merge(section, _interpolate_tree(data, env, name, config.where), name, config.where)
    return resolved


def _override(config: Config, name: str, overrides: dict[str, Any], env: Mapping[str, str], prefix: str,
              locate: Locate) -> Any:
    """Section `name` of the config, resolved, with a target's (resolved) overrides merged over it."""
    path = f"{prefix}.{name}"
    return _merge(_resolved_section(config, name, env), _interpolate_tree(overrides, env, path, locate), path, locate)


def resolve_target(config: Config, name: str | None = None, *, url: str | None = None,
                   env: Mapping[str, str] | None = None) -> ResolvedTarget:
    """Pick a target (or an ad-hoc one from --url), resolve ${VARs}, merge overrides, check URLs."""
    env = os.environ if env is None else env
    if url is not None:
        target, name, prefix = Target(base_url=url), url, ""
        base_url = check_url(url.strip(), "--url") if url.strip() != SANDBOX else SANDBOX
    else:
        name = name or config.default_target
        if name not in config.targets:
            known = ", ".join(sorted(config.targets))
            raise ConfigError(f"{config.source}: no target named {name!r} (targets: {known})")
        target, prefix = config.targets[name], f"targets.{name}"
        base_url = interpolate(target.base_url, env, config.where(f"{prefix}.base_url"))
        if base_url != SANDBOX:
            base_url = check_url(base_url, config.where(f"{prefix}.base_url"))

    def locate(path: str) -> str:
        return config.where(path) if prefix else f"--url: {path.removeprefix('.')}"

    ws_url = interpolate(target.ws_url, env, locate(f"{prefix}.ws_url")) if target.ws_url else None
    if ws_url:
        ws_url = check_url(ws_url, locate(f"{prefix}.ws_url"), ("ws", "wss"))
    resolved = ResolvedTarget(
        name=name,
        base_url=base_url,
        ws_url=ws_url,
        allowed_hosts=tuple(h.lower() for h in target.allowed_hosts),
        verify_tls=target.verify_tls,
        protocol=_override(config, "protocol", target.protocol, env, prefix, locate),
        auth=_override(config, "auth", target.auth, env, prefix, locate),
        timeouts=_merge(config.timeouts, target.timeouts, f"{prefix}.timeouts", locate),
    )
    overridden = bool(prefix) and "endpoint" in target.auth
    _check_auth_endpoint(resolved, config.where(f"{prefix}.auth.endpoint.url" if overridden else "auth.endpoint.url"))
    return resolved


def _hosts_of(target: ResolvedTarget) -> frozenset[str]:
    """The hosts a probe of `target` may contact: its base and ws hosts and its allowed_hosts."""
    hosts = {"127.0.0.1"} if target.is_sandbox else {urlsplit(target.base_url).hostname or ""}
    if target.ws_url:
        hosts.add(urlsplit(target.ws_url).hostname or "")
    hosts.update(target.allowed_hosts)
    return frozenset(h.lower() for h in hosts if h)


def _check_auth_endpoint(target: ResolvedTarget, where: str) -> None:
    """An auth endpoint gets our credentials request: it must be a valid URL on one of the target's hosts."""
    endpoint = target.auth.endpoint
    if target.auth.mode != "endpoint" or endpoint is None:
        return
    url = check_url(endpoint.url, where)
    host = (urlsplit(url).hostname or "").lower()
    if host not in _hosts_of(target):
        raise ConfigError(f"{where}: host {host!r} is not a host of target {target.name!r}; "
                          f"add it to the target's allowed_hosts if probes may send credentials requests there")


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


MAX_CONFIG_BYTES = 2**20  # a real config is a few KiB
MAX_CONFIG_NODES = 20_000  # YAML nodes (keys and values), each alias counted as all it stands for; the packaged
# config has ~330. Pure-Python PyYAML takes ~25 µs a node, so this also keeps a refusal well under a second.
_LIMIT = f"over the {MAX_CONFIG_BYTES // 2**20} MiB limit for a config"


def _size_text(size: int) -> str:
    mib = f"{size / 2**20:.1f}"
    return f"{size:,} bytes" if mib == "1.0" else f"{mib} MiB"


def load_config(path: str | Path | None = None) -> Config:
    """Load and validate a config file (None: the packaged default). Raises ConfigError."""
    if path is None:
        return parse_config(packaged_config_text(), "<packaged config.yaml>")
    p = Path(path)
    return parse_config(_read_config(p), str(p))


def _read_config(p: Path) -> str:
    """The text of a config file. Its size is checked before it is read, and at most 1 MiB + 1 byte is read (a
    file that grows, a pipe or a device has no trustworthy size)."""
    try:
        with p.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > MAX_CONFIG_BYTES:
                raise ConfigError(f"{p}: {_size_text(size)} is {_LIMIT}")
            data = file.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a directory, not a config file") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{p}: is {_LIMIT}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[:exc.start].decode("utf-8")
        line, column = _line_column(before, len(before))
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start}, line {line}, column {column}: "
                          f"{exc.reason})") from None


_LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")  # what YAML counts as a line break


def _line_column(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of character `index` of `text` (`index` may be len(text))."""
    line, start = 1, 0
    for match in _LINE_BREAK.finditer(text, 0, index):
        line, start = line + 1, match.end()
    return line, index - start + 1


class _Refused(MarkedYAMLError):
    """A document the loader will not build (a duplicate key, an alias bomb, an invalid value): `problem` is the
    whole message after 'file:line: '."""

    def __init__(self, problem: str, mark: Mark | None) -> None:
        super().__init__(problem=problem, problem_mark=mark)


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping key, refuses duplicate keys, stops composing past
    MAX_CONFIG_NODES nodes and turns a constructor's exception (2024-13-45, !!int x, !!bool x) into a located
    error."""

    key_lines: dict[int, tuple[dict[str, int], int]]
    nodes = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        self.nodes += 1
        if self.nodes > MAX_CONFIG_NODES:
            raise _Refused(f"the config has more than {MAX_CONFIG_NODES:,} YAML keys and values",
                           self.peek_event().start_mark)  # type: ignore[no-untyped-call]  # (untyped in the stubs)
        return super().compose_node(parent, index)

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as exc:  # PyYAML's scalar constructors raise ValueError, KeyError, AttributeError…
            kind = str(node.tag).rsplit(":", 1)[-1]
            shown = f" {_got(node.value)}" if isinstance(node, ScalarNode) else ""
            reason = f": {str(exc).splitlines()[0]}" if isinstance(exc, ValueError) and str(exc) else ""
            raise _Refused(f"invalid {kind}{shown}{reason}", node.start_mark) from None


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)  # merge keys (<<: *anchor)
    mapping: dict[Any, Any] = {}
    lines: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            duplicate = key in mapping
        except TypeError:  # an unhashable key such as a list
            raise _Refused("YAML syntax error: a mapping key must be a plain value", key_node.start_mark) from None
        if duplicate:
            raise _Refused(f"YAML syntax error: duplicate key {_got(key)} (first at line {lines[str(key)]})",
                           key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=True)
        lines[str(key)] = line
    loader.key_lines[id(mapping)] = (lines, node.start_mark.line + 1)
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

_MAX_NESTING = "the config is nested too deeply"


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expansion(root: Node) -> None:
    """Refuse a node graph that contains itself, or that has more than MAX_CONFIG_NODES nodes once every alias is
    expanded. PyYAML shares an aliased node, but merge keys, the line pass and validation walk it once per use,
    so nine lines of anchors and aliases (the "billion laughs") would take forever. Iterative, in linear time."""
    sizes: dict[int, int] = {}  # id(node) -> its expanded size
    open_nodes: set[int] = set()  # the node being sized and its ancestors
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            open_nodes.discard(id(node))
            size = 1 + sum(sizes[id(child)] for child in _children(node))
            if size > MAX_CONFIG_NODES:
                raise _Refused(f"YAML aliases expand the config to more than {MAX_CONFIG_NODES:,} keys and values "
                               "(an alias bomb?)", node.start_mark)
            sizes[id(node)] = size
        elif id(node) not in sizes:
            open_nodes.add(id(node))
            stack.append((node, True))
            for child in _children(node):
                if id(child) in open_nodes:
                    raise _Refused("a YAML alias refers to a node that contains it", child.start_mark)
                if id(child) not in sizes:
                    stack.append((child, False))


def _yaml_message(exc: yaml.YAMLError, text: str, source: str) -> str:
    """One line for a YAML error: 'file:line: YAML syntax error: what YAML says (column C)'."""
    if isinstance(exc, _Refused):
        mark = exc.problem_mark
        return f"{source}{f':{mark.line + 1}' if mark else ''}: {exc.problem}"
    if isinstance(exc, yaml.reader.ReaderError):  # a control character (NUL, ESC…) anywhere in the text
        line, column = _line_column(text, int(exc.position))
        return f"{source}:{line}: YAML syntax error: {str(exc).splitlines()[0]} (column {column})"
    if isinstance(exc, MarkedYAMLError) and exc.problem and exc.problem_mark:
        mark, context = exc.problem_mark, exc.context_mark
        where = f"column {mark.column + 1}"
        if exc.context and context is not None and (context.line, context.column) != (mark.line, mark.column):
            where += f"; {exc.context} at line {context.line + 1}, column {context.column + 1}"
        return f"{source}:{mark.line + 1}: YAML syntax error: {exc.problem.splitlines()[0]} ({where})"
    return f"{source}: YAML syntax error: {(str(exc).splitlines() or [type(exc).__name__])[0]}"


def _load_yaml(text: str, source: str) -> tuple[Any, dict[int, tuple[dict[str, int], int]]]:
    """The YAML document and its key lines; one-line ConfigError for any syntax problem."""
    loader: _LineLoader | None = None
    try:
        loader = _LineLoader(text)  # the reader refuses control characters here
        loader.key_lines = {}
        node = loader.get_single_node()
        if node is None:
            return None, loader.key_lines
        _check_expansion(node)
        return loader.construct_document(node), loader.key_lines
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_message(exc, text, source)) from None
    except RecursionError:
        raise ConfigError(f"{source}: {_MAX_NESTING}") from None
    finally:
        if loader is not None:
            loader.dispose()


def parse_config(text: str, source: str) -> Config:
    """Validate YAML text as a Config. Raises ConfigError naming `source`, the line and the field."""
    if len(text) > MAX_CONFIG_BYTES:  # characters: fewer than its UTF-8 bytes
        raise ConfigError(f"{source}: is {_LIMIT}")
    data, key_lines = _load_yaml(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: the config must be a mapping (key: value), not {type(data).__name__}")
    try:
        lines = _path_lines(data, key_lines)
        config = Config.model_validate({**data, "source": source})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS)]
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, LocatedError):
            loc = [p for p in loc if p != "__root__"] + list(cause.loc)
        line = _line_of(data, loc, key_lines)
        field = ".".join(_short(str(p)) for p in loc) or "(top level)"
        message = _message(err)
        if err.get("type") == "extra_forbidden":
            message += _suggest(str(loc[-1]), _known_keys(Config, loc[:-1]))
        raise ConfigError(f"{source}{f':{line}' if line else ''}: {field}: {message}") from None
    except RecursionError:
        raise ConfigError(f"{source}: {_MAX_NESTING}") from None
    config._lines.update(lines)
    try:
        _check_target_overrides(config)
        _check_no_literal_credentials(config)
    except RecursionError:
        raise ConfigError(f"{source}: {_MAX_NESTING}") from None
    return config


CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})


def _check_no_literal_credentials(config: Config) -> None:
    """A credential header must come from the environment (${VAR}): a literal one would be a committed secret."""
    sections: list[tuple[str, Any]] = [("protocol.headers", config.protocol.headers)]
    sections += [(f"targets.{name}.protocol.headers", t.protocol.get("headers"))
                 for name, t in config.targets.items() if isinstance(t.protocol, dict)]
    for path, headers in sections:
        if not isinstance(headers, dict):
            continue
        for header, value in headers.items():
            if str(header).lower() in CREDENTIAL_HEADERS and "${" not in str(value):
                raise ConfigError(f"{config.where(f'{path}.{header}')}: a credential header must be an ${{ENV_VAR}} "
                                  "reference, not a literal value (secrets never go in the config file)")


_OVERRIDABLE: dict[str, type[BaseModel]] = {"protocol": Protocol, "auth": Auth, "timeouts": Timeouts}


def _check_target_overrides(config: Config) -> None:
    """Catch what can be caught before a target is chosen: unknown keys in a target's protocol/auth/timeouts,
    and wrong values that hold no ${VAR} (those are checked when the target is resolved)."""
    for name, target in config.targets.items():
        for section, model in _OVERRIDABLE.items():
            overrides: dict[str, Any] = getattr(target, section)
            path = f"targets.{name}.{section}"
            for key in overrides:
                if key not in model.model_fields:
                    hint = _suggest(str(key), list(model.model_fields))
                    raise ConfigError(f"{config.where(f'{path}.{key}')}: unknown key{hint}")
            static = {k: v for k, v in overrides.items() if "${" not in repr(v)}
            _merge(getattr(config, section), static, path, config.where)


_UNION_TAGS = {"function-after", "function-before", "function-wrap"}


def _known_keys(model: type[BaseModel], loc: list[Any]) -> list[str]:
    """The keys allowed at `loc` below `model` (following nested models, lists and dicts of models)."""
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(str(part))
            if info is None:
                return []
            current = info.annotation
        else:  # list[Model] or dict[str, Model]: step over the index or key
            args = [a for a in getattr(current, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
            if not args:
                return []
            current = args[0]
        args = [a for a in getattr(current, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        if args and get_origin(current) is not None and get_origin(current) not in (list, dict):
            current = args[0]  # Optional[Model]
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [k for k, f in current.model_fields.items() if not f.exclude]
    return []


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known keys: {', '.join(known)})" if 0 < len(known) <= 8 else ""


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _got(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:39] + "…"


def _message(err: Mapping[str, Any]) -> str:
    """A short human sentence for one pydantic error, with the offending value where it helps."""
    kind = err.get("type", "")
    ctx = err.get("ctx", {})
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')} (got {_got(err.get('input'))})"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern', '')} — lowercase letters, digits, '-' and '_' " \
               f"(got {_got(err.get('input'))})"
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if kind == "value_error" or "input" not in err:
        return msg
    return f"{msg[:1].lower()}{msg[1:]} (got {_got(err['input'])})"


def _path_lines(data: Any, key_lines: dict[int, tuple[dict[str, int], int]], prefix: str = "") -> dict[str, int]:
    """Every dotted key path in the document ('targets.staging.base_url', 'probes.0.steps') -> its line."""
    out: dict[str, int] = {}
    if isinstance(data, dict) and id(data) in key_lines:
        lines, _ = key_lines[id(data)]
        for key, value in data.items():
            path = f"{prefix}{key}"
            if str(key) in lines:
                out[path] = lines[str(key)]
            out.update(_path_lines(value, key_lines, path + "."))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            if isinstance(value, dict) and id(value) in key_lines:
                out[f"{prefix}{index}"] = key_lines[id(value)][1]
            out.update(_path_lines(value, key_lines, f"{prefix}{index}."))
    return out


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
