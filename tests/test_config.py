"""Config errors are user errors: one clear line naming the file, the line (where YAML has one) and the field,
exit code 2 from the CLI, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from probes.config import ConfigError, load_config, packaged_config_text, parse_config, resolve_target
from tui.cli import main

BASE = packaged_config_text()
LINES = BASE.splitlines()


def line_of(fragment: str, text: str = BASE) -> int:
    """1-based line of the first line containing `fragment`."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if fragment in line)


def edit(old: str, new: str) -> Callable[[], str]:
    def apply() -> str:
        assert old in BASE, old
        return BASE.replace(old, new, 1)
    return apply


# name -> (how to make the bad text, the exact start of the message after "bad.yaml")
CASES: dict[str, tuple[Callable[[], str], str]] = {
    "a literal credential header": (
        edit('    X-E2E-Test: "true"\n', '    X-E2E-Test: "true"\n    Authorization: "Bearer abc"\n'),
        f":{line_of('X-E2E-Test') + 1}: protocol.headers.Authorization: a credential header must be "
        "an ${ENV_VAR} reference"),
    "unknown top-level key": (lambda: BASE + "\nbogus: 1\n", f":{len(LINES) + 2}: bogus: unknown key"),
    "unknown nested key, with a suggestion": (
        edit("  ws_path: /ws\n", "  ws_path: /ws\n  wspath: /x\n"),
        f":{line_of('  ws_path: /ws') + 1}: protocol.wspath: unknown key (did you mean 'ws_path'?)"),
    "unknown step key": (
        edit("{step: http, name: health}\n\n", "{step: http, name: health, pth: /x}\n\n"),
        f":{line_of('{step: http, name: health}')}: probes.0.steps.0.pth: unknown key (did you mean 'path'?)"),
    "wrong type: number": (
        edit("  http: 5\n", "  http: fast\n"),
        f":{line_of('  http: 5')}: timeouts.http: input should be a valid number"),
    "wrong type: list": (
        edit("  health_paths: [/health]", "  health_paths: /health"),
        f":{line_of('health_paths')}: protocol.health_paths: input should be a valid list (got '/health')"),
    "out of range": (
        edit("  ready: 5\n", "  ready: -1\n"),
        f":{line_of('  ready: 5')}: timeouts.ready: input should be greater than 0 (got -1)"),
    "unknown probe step": (
        edit("{step: http, name: health}\n\n", "{step: htp, name: health}\n\n"),
        (f":{line_of('{step: http, name: health}')}: probes.0.steps.0.step: must be one of 'http', 'auth', "
         "'connect', 'expect', 'send', 'expect_events', 'close' or 'hold' (got 'htp')")),
    "bad auth mode": (
        edit("  mode: mint", "  mode: magic"),
        (f":{line_of('  mode: mint')}: auth.mode: must be one of 'mint', 'env', 'endpoint' or 'none' "
         "(got 'magic')")),
    "bad probe id": (
        edit("- id: health", "- id: Health!"),
        f":{line_of('- id: health')}: probes.0.id: must match"),
    "duplicate probe id": (
        lambda: BASE + "\n  - id: health\n    steps: [{step: http, name: h}]\n",
        f":{len(LINES) + 2}: probes.6.id: probe id 'health' is used twice"),
    "duplicate stage name": (
        edit("      - {step: auth, name: auth}\n      - {step: connect, name: connect}\n",
             "      - {step: auth, name: health}\n      - {step: connect, name: connect}\n"),
        f":{line_of('{step: auth, name: auth}')}: probes.1.steps.1.name: stage name 'health' is used twice"),
    "missing required field": (
        lambda: "default_target: s\ntargets: {s: {base_url: sandbox}}\nprobes:\n  - id: a\n",
        ":4: probes.0.steps: a probe needs at least one step"),
    "default target unknown": (
        edit("default_target: sandbox", "default_target: prod"),
        f":{line_of('default_target')}: default_target: 'prod' is not one of the targets (sandbox, staging)"),
    "target override: unknown key": (
        edit("      expected_version:", "      ws_pth: /x\n      expected_version:"),
        (f":{line_of('expected_version: ${STAGING')}: targets.staging.protocol.ws_pth: unknown key "
         "(did you mean 'ws_path'?)")),
    "target override: wrong type": (
        edit("timeouts: {connect: 10, ready: 5, agent: 30}", "timeouts: {connect: soon}"),
        f":{line_of('timeouts: {connect: 10')}: targets.staging.timeouts.connect: input should be a valid number"),
    "allowed_hosts given as URLs": (
        edit("allowed_hosts: []", "allowed_hosts: [https://auth.example.com]"),
        f":{line_of('allowed_hosts: []')}: targets.staging.allowed_hosts.0: give a host name"),
    "subprotocol template placeholder": (
        edit('"jwt.{token_b64}"', '"jwt.{tok}"'),
        f":{line_of('subprotocol_template')}: protocol.subprotocol_template: unknown placeholder {{tok}}"),
    "header value with a line break": (
        edit('X-E2E-Test: "true"', 'X-E2E-Test: "a\\nInjected: 1"'),
        f":{line_of('X-E2E-Test')}: protocol.headers.X-E2E-Test: a header value cannot contain a line break"),
    "YAML syntax error": (
        edit("default_target: sandbox", "default_target: [sandbox"),
        f":{line_of('targets:')}: YAML syntax error: expected ',' or ']', but got ':'"),
    "YAML tab": (
        edit("  ws_path: /ws", "\tws_path: /ws"),
        f":{line_of('ws_path: /ws')}: YAML syntax error: found character '\\t' that cannot start any token"),
    "YAML duplicate key": (
        lambda: BASE + "\ndefault_target: sandbox\n",
        (f":{len(LINES) + 2}: YAML syntax error: duplicate key 'default_target' (first at line "
         f"{line_of('default_target')})")),
    "not a mapping": (lambda: "- a\n- b\n", ":1: the config must be a mapping (key: value), not list"),
    "empty file": (lambda: "", ": targets: required field is missing"),
    "nested too deeply (lists)": (lambda: "a: " + "[" * 5000 + "]" * 5000, ": the config is nested too deeply"),
    "nested too deeply (maps)": (lambda: "a: " + "{x: " * 3000 + "1" + "}" * 3000,
                                 ": the config is nested too deeply"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_parse_config_error_is_one_line_with_file_line_and_field(name: str) -> None:
    make, expected = CASES[name]
    with pytest.raises(ConfigError) as info:
        parse_config(make(), "bad.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("bad.yaml" + expected), message


def test_packaged_config_is_valid() -> None:
    config = load_config(None)
    assert config.default_target == "sandbox"
    assert {"health", "golden-path"} <= {p.id for p in config.probes}


def test_load_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found$"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r": is a directory, not a config file$"):
        load_config(tmp_path)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"default_target: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin\.yaml: not UTF-8 text \(byte 19"):
        load_config(latin)


def test_missing_env_var_names_file_line_and_field() -> None:
    config = load_config(None)
    with pytest.raises(ConfigError) as info:
        resolve_target(config, "staging", env={})
    assert str(info.value) == (f"<packaged config.yaml>:{line_of('${STAGING_BASE_URL}')}: targets.staging.base_url: "
                               "environment variable STAGING_BASE_URL is not set")


def test_env_var_default_and_unused_target_need_nothing() -> None:
    config = load_config(None)
    target = resolve_target(config, "staging", env={"STAGING_BASE_URL": "https://api.staging.example.com/"})
    assert target.base_url == "https://api.staging.example.com"
    assert target.protocol.expected_version == ""  # ${STAGING_EXPECTED_VERSION:-}
    assert resolve_target(config, env={}).is_sandbox  # staging's missing variable does not matter


@pytest.mark.parametrize("url, expected", [
    ("ftp://x.staging.io", "'ftp://x.staging.io' is not a valid URL (expected http/https://host[:port])"),
    ("not a url", "'not a url' is not a valid URL"),
    ("http://h.staging.io:99999", "'http://h.staging.io:99999' has an invalid host or port"),
    ("https://", "'https://' is not a valid URL"),
    ("https://user:pw@x.staging.io", "credentials in a URL would be printed and recorded"),
])
def test_bad_urls(url: str, expected: str) -> None:
    config = load_config(None)
    with pytest.raises(ConfigError) as info:
        resolve_target(config, "staging", env={"STAGING_BASE_URL": url})
    assert str(info.value).startswith(f"<packaged config.yaml>:{line_of('${STAGING_BASE_URL}')}: "
                                      f"targets.staging.base_url: {expected}"), str(info.value)
    with pytest.raises(ConfigError) as info:
        resolve_target(config, url=url)
    assert str(info.value).startswith(f"--url: {expected}"), str(info.value)


def test_interpolated_override_is_checked_when_the_target_is_resolved() -> None:
    text = BASE.replace("      expected_version: ${STAGING_EXPECTED_VERSION:-}", "      ordered: ${ORDERED}")
    config = parse_config(text, "c.yaml")  # a ${VAR} value cannot be checked before it is resolved
    with pytest.raises(ConfigError) as info:
        resolve_target(config, "staging", env={"STAGING_BASE_URL": "https://x.staging.io", "ORDERED": "maybe"})
    assert str(info.value).startswith(f"c.yaml:{line_of('expected_version: ${')}: targets.staging.protocol.ordered: "
                                      "input should be a valid boolean"), str(info.value)


def test_unknown_target() -> None:
    with pytest.raises(ConfigError, match=r"^<packaged config.yaml>: no target named 'prod' \(targets: sandbox, "
                                          r"staging\)$"):
        resolve_target(load_config(None), "prod")


# --- the CLI --------------------------------------------------------------------------------------------

def _cli(args: list[str], tmp_path: Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, args, env={"STAGING_BASE_URL": "", "STAGEWATCH_CONFIG": ""})
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("name", ["unknown nested key, with a suggestion", "wrong type: number",
                                  "unknown probe step", "YAML syntax error", "nested too deeply (lists)",
                                  "not a mapping"])
def test_cli_bad_config_exits_2_with_one_line(name: str, tmp_path: Path) -> None:
    make, expected = CASES[name]
    bad = tmp_path / "bad.yaml"
    bad.write_text(make(), encoding="utf-8")
    code, out, err = _cli(["run", "--config", str(bad)], tmp_path)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"stagewatch: error: {bad}{expected}"), err


@pytest.mark.parametrize("args, expected", [
    (["run", "--config", "{tmp}/missing.yaml"], "{tmp}/missing.yaml: config file not found"),
    (["run", "--target", "staging"], ("<packaged config.yaml>:{staging_line}: targets.staging.base_url: "
                                      "environment variable STAGING_BASE_URL is not set")),
    (["run", "--url", "localhost:8000"], "--url: 'localhost:8000' is not a valid URL"),
    (["run", "--target", "nope"], "<packaged config.yaml>: no target named 'nope'"),
])
def test_cli_usage_errors_exit_2_with_one_line(args: list[str], expected: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config.yaml
    fmt = {"tmp": str(tmp_path), "staging_line": line_of("${STAGING_BASE_URL}")}
    code, out, err = _cli([a.format(**fmt) for a in args], tmp_path)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("stagewatch: error: " + expected.format(**fmt)), err


def test_installed_command_bad_config(tmp_path: Path) -> None:
    """The real console script, as CI runs it: exit 2, one line on stderr, nothing on stdout."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE.replace("  http: 5\n", "  http: fast\n"), encoding="utf-8")
    exe = Path(sys.executable).with_name("stagewatch")
    proc = subprocess.run([str(exe), "run", "--config", str(bad)], check=False, capture_output=True, text=True,
                          timeout=30, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == (f"stagewatch: error: {bad}:{line_of('  http: 5')}: timeouts.http: input should be a valid "
                           "number, unable to parse string as a number (got 'fast')\n")
