"""Config loading is bounded and every bad input is one line: a file over 1 MiB is refused before it is read, an
alias bomb ("billion laughs") is refused before it is expanded, and every YAML reader/scanner/parser/constructor
error names the file, line and column, with any text from the file made visible (no raw ESC or NUL), exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from probes.config import (MAX_CONFIG_BYTES, MAX_CONFIG_NODES, ConfigError, load_config, packaged_config_text,
                           parse_config)

BASE = packaged_config_text()
STAGEWATCH = [sys.executable, "-m", "tui.cli"]
ROOT = Path(__file__).resolve().parent.parent


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JWT_SECRET_KEY", "STAGEWATCH_CONFIG", "NO_COLOR")}
    env.update(extra)
    return env


def _stagewatch(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run([*STAGEWATCH, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=env or _env(PYTHONPATH=str(ROOT)))


def line_of(fragment: str, text: str = BASE) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if fragment in line)


def billion_laughs(levels: int = 9) -> str:
    """Ten lines that expand to 10**levels strings."""
    lines = ['lol0: &lol0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"lol{i}: &lol{i} [" + ", ".join([f"*lol{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def merge_bomb(levels: int = 40) -> str:
    """Merge keys that double a mapping at every level (flatten_mapping would build 2**40 pairs)."""
    lines = ["m0: &m0 {a: 1, b: 2}"]
    lines += [f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}]}}" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def parse_error(text: str, source: str = "bad.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert not any(ord(ch) < 0x20 or 0x7f <= ord(ch) <= 0x9f for ch in message), repr(message)
    return message


# --- size ------------------------------------------------------------------------------------------------

class _SpyFile:
    """A file opened by load_config, recording the size of every read."""

    def __init__(self, file: Any, reads: list[int]) -> None:
        self.file, self.reads = file, reads

    def __enter__(self) -> _SpyFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def fileno(self) -> int:
        return int(self.file.fileno())

    def read(self, size: int = -1) -> bytes:
        self.reads.append(size)
        return bytes(self.file.read(size))


def test_a_50_mib_file_is_refused_by_its_size_before_any_read(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "config.yaml"
    with big.open("wb") as f:
        f.truncate(50 * 2**20)  # sparse: nothing is written
    small = tmp_path / "small.yaml"
    small.write_text(BASE, encoding="utf-8")
    reads: list[int] = []
    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: _SpyFile(real_open(self, *a, **k), reads))
    with pytest.raises(ConfigError) as info:
        load_config(big)
    assert str(info.value) == f"{big}: 50.0 MiB is over the 1 MiB limit for a config"
    assert reads == []
    assert load_config(small).default_target == "sandbox"
    assert reads == [MAX_CONFIG_BYTES + 1]  # never "read it all"


def test_just_over_the_limit_names_bytes_and_exactly_the_limit_loads(tmp_path: Path) -> None:
    padded = BASE + "#" * (MAX_CONFIG_BYTES - len(BASE.encode()) - 1) + "\n"
    assert len(padded.encode()) == MAX_CONFIG_BYTES
    ok = tmp_path / "ok.yaml"
    ok.write_text(padded, encoding="utf-8")
    assert load_config(ok).default_target == "sandbox"
    over = tmp_path / "over.yaml"
    over.write_text(padded + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(over)
    assert str(info.value) == f"{over}: 1,048,577 bytes is over the 1 MiB limit for a config"


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_an_endless_file_is_read_only_up_to_the_limit() -> None:
    """/dev/zero reports size 0 and never ends: reading it whole would never return."""
    with pytest.raises(ConfigError, match=r"^/dev/zero: is over the 1 MiB limit for a config$"):
        load_config("/dev/zero")


def test_parse_config_refuses_oversized_text_too() -> None:
    assert parse_error("#" * (MAX_CONFIG_BYTES + 1)) == "bad.yaml: is over the 1 MiB limit for a config"


# --- aliases and node counts -----------------------------------------------------------------------------

def test_billion_laughs_is_refused_not_expanded() -> None:
    message = parse_error(billion_laughs())
    # lol4 is the first anchor over 20,000 values (10**5 strings)
    assert message == (f"bad.yaml:5: YAML aliases expand the config to more than {MAX_CONFIG_NODES:,} keys and "
                       "values (an alias bomb?)")


def test_billion_laughs_inside_a_valid_config_is_refused() -> None:
    text = BASE.replace("  agent_events: [", "  agent_events: &ev [", 1)
    text += "".join(f"\nx{i}: &x{i} [" + ", ".join([f"*{'ev' if i == 0 else f'x{i - 1}'}"] * 10) + "]"
                    for i in range(12))
    message = parse_error(text)
    assert "YAML aliases expand the config to more than" in message and message.startswith("bad.yaml:")


def test_merge_key_bomb_is_refused() -> None:
    message = parse_error(merge_bomb())
    assert message.startswith("bad.yaml:") and "YAML aliases expand the config to more than" in message


@pytest.mark.parametrize("text", ["a: &a [1, *a]\n", "a: &a {x: *a}\n", "a: &a [[[*a]]]\n"])
def test_an_alias_inside_its_own_anchor_is_refused(text: str) -> None:
    assert parse_error(text) == "bad.yaml:1: a YAML alias refers to a node that contains it"


def test_too_many_nodes_without_aliases_stops_composing() -> None:
    text = "a: [" + ", ".join(["0"] * (MAX_CONFIG_NODES + 10)) + "]\n"
    assert parse_error(text) == f"bad.yaml:1: the config has more than {MAX_CONFIG_NODES:,} YAML keys and values"


def test_modest_anchors_aliases_and_merge_keys_still_load() -> None:
    text = (BASE
            .replace("    base_url: sandbox ", "    allowed_hosts: &hosts [auth.staging.example.com]\n"
                                               "    base_url: sandbox ", 1)
            .replace("    allowed_hosts: []", "    allowed_hosts: *hosts", 1)
            .replace("    timeouts: {connect: 10, ready: 5, agent: 30}",
                     "    timeouts: &slow {connect: 10, ready: 5, agent: 30}", 1)
            .replace("  http: 5\n  connect: 10\n  ready: 5\n  agent: 30\n", "  <<: *slow\n  http: 5\n", 1))
    assert text.count("*slow") == text.count("*hosts") == 1
    config = parse_config(text, "ok.yaml")
    assert config.targets["staging"].allowed_hosts == ["auth.staging.example.com"]
    assert (config.timeouts.connect, config.timeouts.agent, config.timeouts.http) == (10, 30, 5)


# --- YAML errors: one line with file, line and column ----------------------------------------------------

LINE3 = "default_target: sandbox\n# a comment\n"  # the bad character goes on line 3


@pytest.mark.parametrize("bad, expected", [
    ("\x00", "unacceptable character #x0000: special characters are not allowed (column 9)"),
    ("\x1b", "unacceptable character #x001b: special characters are not allowed (column 9)"),
    ("\x7f", "unacceptable character #x007f: special characters are not allowed (column 9)"),
    ("\x9b", "unacceptable character #x009b: special characters are not allowed (column 9)"),
])
def test_control_characters_are_one_located_line(bad: str, expected: str) -> None:
    message = parse_error(LINE3 + f"probes: {bad}[31m\n")
    assert message == f"bad.yaml:3: YAML syntax error: {expected}"


@pytest.mark.parametrize("text, expected", [
    ("a:\n\tb: 1\n", "bad.yaml:2: YAML syntax error: found character '\\t' that cannot start any token (column 1)"),
    ('a: 1\nb: "unclosed\nc: 2\n', ("bad.yaml:4: YAML syntax error: found unexpected end of stream (column 1; "
                                   "while scanning a quoted scalar at line 2, column 4)")),
    ("a: 1\nb: 'unclosed\n", ("bad.yaml:3: YAML syntax error: found unexpected end of stream (column 1; while "
                             "scanning a quoted scalar at line 2, column 4)")),
    ("a: [1, 2\n", ("bad.yaml:2: YAML syntax error: expected ',' or ']', but got '<stream end>' (column 1; while "
                    "parsing a flow sequence at line 1, column 4)")),
    ("a: *nowhere\n", "bad.yaml:1: YAML syntax error: found undefined alias 'nowhere' (column 4)"),
    ("a: 1\n---\nb: 2\n", "bad.yaml:2: YAML syntax error: but found another document (column 1; expected a single "
                          "document in the stream at line 1, column 1)"),
    ("a: !!python/object:os.system x\n", ("bad.yaml:1: YAML syntax error: could not determine a constructor for the "
                                          "tag 'tag:yaml.org,2002:python/object:os.system' (column 4)")),
    ("a: 2024-13-45\n", "bad.yaml:1: invalid timestamp '2024-13-45': month must be in 1..12"),
    ("a: 1\nb: !!int xyz\n", "bad.yaml:2: invalid int 'xyz': invalid literal for int() with base 10: 'xyz'"),
    ("a: !!bool maybe\n", "bad.yaml:1: invalid bool 'maybe'"),
    ("a: !!timestamp soon\n", "bad.yaml:1: invalid timestamp 'soon'"),
    ("? [a]\n: 1\n", "bad.yaml:1: YAML syntax error: a mapping key must be a plain value"),
])
def test_yaml_errors_are_one_located_line(text: str, expected: str) -> None:
    assert parse_error(text).startswith(expected)


def test_a_huge_int_is_one_short_line() -> None:
    message = parse_error("a: " + "9" * 5000 + "\n")
    assert message.startswith("bad.yaml:1: invalid int '999") and "Exceeds the limit (4300 digits)" in message
    assert len(message) < 300


def test_text_from_the_file_is_shown_escaped() -> None:
    text = BASE.replace("\nprotocol:\n", '\nprotocol:\n  "ws\\e]0;pwned\\aPath\\u202e": /x\n', 1)
    message = parse_error(text)
    assert message.startswith(f"bad.yaml:{line_of('  ws_path: /ws')}: protocol.ws\\x1b]0;pwned\\x07Path\\u202e: "
                              "unknown key"), message


def test_duplicate_key_quotes_a_long_key_shortened() -> None:
    key = "k" * 5000
    message = parse_error(f"? {key}\n: 1\n? {key}\n: 2\n")  # an explicit key may be over 1024 characters
    assert message.startswith("bad.yaml:3: YAML syntax error: duplicate key 'kkk") and len(message) < 200


def test_a_config_error_is_always_one_visible_line() -> None:
    assert str(ConfigError("a\x1b[2Jb\nc\td\x00")) == "a\\x1b[2Jb\\nc\\td\\x00"
    assert len(str(ConfigError("x" * 100_000))) <= 1000


def test_invalid_utf8_names_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_bytes(b"default_target: sandbox\nprobes: caf\xc3\xa9 \xff\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert str(info.value) == f"{bad}: not UTF-8 text (byte 38, line 2, column 14: invalid start byte)"


# --- the CLI, end to end ---------------------------------------------------------------------------------

def _write(path: Path, content: bytes | None) -> None:
    if content is None:  # 50 MiB, sparse
        with path.open("wb") as f:
            f.truncate(50 * 2**20)
    else:
        path.write_bytes(content)


CLI_CASES: dict[str, tuple[bytes | None, str]] = {
    "NUL": (b"default_target: sand\x00box\n", ":1: YAML syntax error: unacceptable character #x0000"),
    "ESC": (b"default_target: sandbox\nprobes: \x1b]0;owned\x07\n",
            ":2: YAML syntax error: unacceptable character #x001b: special characters are not allowed (column 9)"),
    "tab": (b"a:\n\tb: 1\n", ":2: YAML syntax error: found character '\\t' that cannot start any token (column 1)"),
    "invalid UTF-8": (b"default_target: caf\xe9\n",
                      ": not UTF-8 text (byte 19, line 1, column 20: invalid continuation byte)"),
    "unclosed quote": (b'a: "abc\nb: 1\n', ":3: YAML syntax error: found unexpected end of stream (column 1; "
                       "while scanning a quoted scalar at line 1, column 4)"),
    "billion laughs": (billion_laughs().encode(), ":5: YAML aliases expand the config to more than"),
    "50 MiB": (None, ": 50.0 MiB is over the 1 MiB limit for a config"),
}


@pytest.mark.parametrize("name", list(CLI_CASES))
def test_cli_run_bad_config_exits_2_with_one_line(name: str, tmp_path: Path) -> None:
    content, expected = CLI_CASES[name]
    bad = tmp_path / "bad.yaml"
    _write(bad, content)
    proc = _stagewatch("run", "--config", str(bad), "--no-record", cwd=tmp_path, timeout=30)
    assert (proc.returncode, proc.stdout) == (2, ""), proc.stderr[-3000:]
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.startswith(f"stagewatch: error: {bad}{expected}"), proc.stderr
    assert "\x1b" not in proc.stderr and "\x00" not in proc.stderr and "\x07" not in proc.stderr


@pytest.mark.parametrize("name", ["ESC", "billion laughs", "50 MiB"])
def test_cli_bare_command_bad_config_exits_2_with_one_line(name: str, tmp_path: Path) -> None:
    content, expected = CLI_CASES[name]
    bad = tmp_path / "bad.yaml"
    _write(bad, content)
    proc = _stagewatch("--config", str(bad), cwd=tmp_path, timeout=30)
    assert (proc.returncode, proc.stdout) == (2, ""), proc.stderr[-3000:]
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.startswith(f"stagewatch: error: {bad}{expected}"), proc.stderr
