"""Diagnosis rules, one by one: each sandbox fault (or loopback condition) yields its code as the first
diagnosis with evidence; a healthy run yields none; the close-code table matches RFC 6455 and IANA."""

from __future__ import annotations

import asyncio
import re
import json
import socket
import time

import jwt
import pytest
from websockets.asyncio.server import serve

from probes.bus import EventBus
from probes.closecodes import CLOSE_CODES, NOT_ON_WIRE, describe, label
from probes.config import Config, Target, resolve_target
from probes.diagnosis import RULES, diagnose
from probes.events import Closed, Diagnosed, ProbeStarted, StageFinished, StageStarted
from probes.evidence import EchoCheck
from probes.model import ProbeModel, RunModel
from probes.report import to_json
from probes.steps.auth import AuthEvidence
from probes.steps.connect import ConnectEvidence
from probes.steps.expect_events import EventsEvidence
from probes.steps.http import HttpEvidence
from probes.steps.send import SendEvidence
from probes.runner import RunOptions, run_queue
from probes.sandbox import Sandbox, SandboxOptions
from tests.conftest import run_sandbox

FAULT_DIAGNOSIS = {
    "closed-before-ready": "closed-before-ready",
    "auth-rejected": "auth-rejected",
    "auth-close": "auth-rejected",
    "strip-auth": "auth-header-stripped",
    "clock-skew": "clock-skew",
    "server-error": "server-error",
    "abnormal-close": "abnormal-close",
    "restart": "restart-during-run",
    "version-mismatch": "version-mismatch",
    "not-ready": "not-ready",
    "no-upgrade": "no-upgrade",
    "subprotocol-not-echoed": "subprotocol-not-echoed",
    "missing-events": "missing-events",
    "events-out-of-order": "events-out-of-order",
    "slow-agent": "agent-timeout",
    "empty-response": "empty-response",
    "error-frame": "error-frame",
    "garbage": "unexpected-frame",
    "silent": "ready-timeout",
    "huge-frame": "message-too-big",
}


def _diagnoses(out, probe="golden-path"):
    found = [e for e in out.events if isinstance(e, Diagnosed) and e.probe_id == probe]
    return list(found[0].diagnoses) if found else []


@pytest.mark.parametrize("fault", list(FAULT_DIAGNOSIS))
async def test_fault_names_its_diagnosis_first(fast_config, fault):
    probe = "health" if fault in ("version-mismatch", "not-ready") else "golden-path"
    out = await run_sandbox(fast_config, fault, only=(probe,), sandbox=SandboxOptions(delay=2.0))
    diagnoses = _diagnoses(out, probe)
    assert diagnoses, f"{fault}: no diagnosis"
    first = diagnoses[0]
    assert first["code"] == FAULT_DIAGNOSIS[fault], [d["code"] for d in diagnoses]
    assert first["evidence"] and all(isinstance(x, str) and x for x in first["evidence"])
    assert first["summary"] and first["next_step"]


async def test_healthy_run_has_no_diagnosis(fast_config):
    out = await run_sandbox(fast_config)
    assert out.result.verdict == "pass"
    assert not [e for e in out.events if isinstance(e, Diagnosed)]


async def test_evidence_names_the_facts(fast_config):
    out = await run_sandbox(fast_config, "closed-before-ready", only=("golden-path",))
    first = _diagnoses(out)[0]
    text = " ".join(first["evidence"])
    assert "1000 Normal Closure" in text and "'main cleanup'" in text and "server closed" in text
    assert "no connection_established frame before the close" in text
    out = await run_sandbox(fast_config, "strip-auth", only=("golden-path",))
    first = _diagnoses(out)[0]
    assert "Authorization and Sec-WebSocket-Protocol" in first["evidence"][0]
    out = await run_sandbox(fast_config, "clock-skew", only=("golden-path",))
    assert "ahead of this machine's clock" in _diagnoses(out)[0]["evidence"][0]


async def _run_url(config: Config, url: str, env: dict[str, str] | None = None, only=("golden-path",)):
    bus = EventBus()
    events: list = []
    bus.subscribe(events.append)
    target = resolve_target(config, url=url)
    await run_queue(config, target, bus, RunOptions(only=only, env=env or {"JWT_SECRET_KEY": "k" * 32}))
    return events


def _first_code(events, probe="golden-path"):
    d = [e for e in events if isinstance(e, Diagnosed) and e.probe_id == probe]
    return d[0].diagnoses[0]["code"] if d else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_dns_or_refused_for_a_closed_port(fast_config):
    events = await _run_url(fast_config, f"http://127.0.0.1:{_free_port()}", only=("health",))
    assert _first_code(events, "health") == "dns-or-refused"


async def test_tls_error_against_a_plain_server(fast_config):
    async with Sandbox() as sb:
        events = await _run_url(fast_config, f"https://127.0.0.1:{sb.port}", only=("health",))
    assert _first_code(events, "health") == "tls-error"


async def test_subprotocol_illegal(fast_config):
    protocol = fast_config.protocol.model_copy(update={"subprotocol_template": "jwt/{token}"})
    config = fast_config.model_copy(update={"protocol": protocol})
    out = await run_sandbox(config, only=("golden-path",))
    assert _diagnoses(out)[0]["code"] == "subprotocol-illegal"


async def test_token_expired_from_the_environment(fast_config):
    async with Sandbox(SandboxOptions(secret="s" * 32)) as sb:
        expired = jwt.encode({"sub": "u", "iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600},
                             "s" * 32, algorithm="HS256")
        auth = fast_config.auth.model_copy(update={"mode": "env"})
        config = fast_config.model_copy(update={"auth": auth})
        events = await _run_url(config, sb.base_url, env={"STAGEWATCH_TOKEN": expired})
    assert _first_code(events) == "token-expired"


async def test_auth_not_enforced(fast_config):
    probe = next(p for p in fast_config.probes if p.id == "auth-required")
    step = probe.steps[0].model_copy(update={"token": "default"})
    config = fast_config.model_copy(update={"probes": [probe.model_copy(update={"steps": [step]})]})
    out = await run_sandbox(config)
    assert _diagnoses(out, "auth-required")[0]["code"] == "auth-not-enforced"


def _synthetic(close_code: int, after_ms: float, by: str = "none", stage: str = "agent",
               step: str = "expect_events") -> ProbeModel:
    ev = ProbeModel("p")
    ev.apply(ProbeStarted(0, "p", "p", 1, (stage,)))
    ev.apply(StageStarted(0, "p", stage, step))
    ev.apply(Closed(1, "p", close_code, describe(close_code).name, "", by, after_ms, close_code not in NOT_ON_WIRE))
    ev.apply(StageFinished(1, "p", stage, "fail", after_ms, "closed", EventsEvidence(closed=True)))
    return ev


@pytest.mark.parametrize("seconds", [30, 60, 300, 3600])
def test_lifetime_matches_proxy_timer(seconds):
    found = diagnose(_synthetic(1006, seconds * 1000 + 120))
    assert found[0].code == "lifetime-matches-proxy-timer"
    assert f"{seconds}" in " ".join(found[0].evidence)


def test_abnormal_close_off_the_timers_is_not_a_proxy_timer():
    found = diagnose(_synthetic(1006, 42_000))
    assert [d.code for d in found] == ["abnormal-close"]


def test_going_away_at_a_proxy_timer_and_elsewhere():
    assert diagnose(_synthetic(1001, 60_400, "server"))[0].code == "lifetime-matches-proxy-timer"
    assert diagnose(_synthetic(1001, 12_000, "server"))[0].code == "restart-during-run"


def test_application_auth_close_codes():
    for code in (4001, 4003):
        assert diagnose(_synthetic(code, 20, "server", "handshake", "expect"))[0].code == "auth-rejected"


def test_try_again_later_is_not_ready():
    assert diagnose(_synthetic(1013, 20, "server", "handshake", "expect"))[0].code == "not-ready"


def test_unexplained_failure_is_unknown_not_a_guess():
    ev = ProbeModel("p")
    ev.apply(StageStarted(0, "p", "x", "send"))
    ev.apply(StageFinished(0, "p", "x", "fail", 1.0, "something odd", SendEvidence()))
    found = diagnose(ev)
    assert [d.code for d in found] == ["unknown"]


def test_every_rule_has_a_stable_code_summary_and_next_step():
    codes = [r.code for r in RULES]
    assert len(codes) == len(set(codes))
    required = {"dns-or-refused", "tls-error", "not-ready", "version-mismatch", "no-upgrade", "auth-rejected",
                "auth-header-stripped", "token-expired", "clock-skew", "subprotocol-not-echoed",
                "subprotocol-illegal", "closed-before-ready", "server-error", "abnormal-close",
                "lifetime-matches-proxy-timer", "agent-timeout", "missing-events", "events-out-of-order",
                "empty-response", "restart-during-run"}
    assert required <= set(codes)
    assert all(r.summary and r.next_step for r in RULES)


# RFC 6455 §7.4.1 and the IANA WebSocket Close Code Number Registry.
IANA = {1000: "Normal Closure", 1001: "Going Away", 1002: "Protocol Error", 1003: "Unsupported Data",
        1004: "Reserved", 1005: "No Status Received", 1006: "Abnormal Closure",
        1007: "Invalid Frame Payload Data", 1008: "Policy Violation", 1009: "Message Too Big",
        1010: "Mandatory Extension", 1011: "Internal Error", 1012: "Service Restart", 1013: "Try Again Later",
        1014: "Bad Gateway", 1015: "TLS Handshake"}


def test_close_code_table_matches_the_registry():
    assert {c: i.name for c, i in CLOSE_CODES.items()} == IANA
    assert NOT_ON_WIRE == {1004, 1005, 1006, 1015}
    assert label(1006) == "1006 Abnormal Closure (not sent by the peer)"
    assert label(1000) == "1000 Normal Closure"
    assert describe(3001).name.startswith("Registered") and describe(4403).name == "Application"
    assert describe(2000).name == "Unassigned" and not describe(999).on_wire and not describe(5000).on_wire


def test_summary_keeps_diagnoses_per_probe():
    summary = RunModel()
    summary.apply(ProbeStarted(0, "p", "p", 1, ("s",)))
    summary.apply(Diagnosed(0, "p", ({"code": "x", "summary": "y", "evidence": [], "next_step": ""},)))
    assert to_json(summary)["probes"][0]["diagnoses"][0]["code"] == "x"


def test_rules_are_pure(fast_config):
    ev = _synthetic(1011, 10, "server")
    assert diagnose(ev) == diagnose(ev)
    asyncio.get_event_loop_policy()  # no loop needed: rules never touch the network


def _refused(body: str, status: int = 401, echo: dict | None = None) -> ProbeModel:
    ev = ProbeModel("p")
    ev.apply(StageStarted(0, "p", "connect", "connect"))
    evidence = ConnectEvidence(http_status=status, body=body, token_sent=True, transport=["subprotocol", "header"],
                               echo=EchoCheck.from_record(echo) if echo is not None else None)
    ev.apply(StageFinished(0, "p", "connect", "fail", 1.0, f"HTTP {status}", evidence))
    return ev


@pytest.mark.parametrize("body", ['{"detail": "Missing authentication token"}', "No Authorization header",
                                  "authentication required", '{"error": "token not provided"}'])
def test_server_saying_the_credential_is_missing_means_stripped(body):
    assert diagnose(_refused(body))[0].code == "auth-header-stripped"


@pytest.mark.parametrize("body", ['{"detail": "invalid token"}', "token expired", "Forbidden", ""])
def test_server_rejecting_a_bad_credential_is_not_stripped(body):
    assert diagnose(_refused(body))[0].code == "auth-rejected"


@pytest.mark.parametrize("echo,stripped", [
    ({"url": "/e", "status": 200, "authorization_sent": True, "authorization_arrived": False,
      "subprotocol_sent": True, "subprotocol_arrived": True}, True),
    ({"url": "/e", "status": 200, "authorization_sent": True, "authorization_arrived": True,
      "subprotocol_sent": True, "subprotocol_arrived": True}, False),
])
def test_echo_endpoint_decides_over_the_wording(echo, stripped):
    code = diagnose(_refused('{"detail": "missing token"}', echo=echo))[0].code
    assert (code == "auth-header-stripped") is stripped


def test_echo_header_shapes():
    from probes.context import echoed_headers as _echoed_headers

    assert _echoed_headers({"headers": {"Authorization": "Bearer x"}})["authorization"] == "Bearer x"
    assert _echoed_headers({"received": {"headers": {"authorization": None}}})["authorization"] is None
    assert _echoed_headers({"Sec_WebSocket_Protocol": "missing"})["sec-websocket-protocol"] is None
    assert _echoed_headers(["not", "a", "map"]) is None


# --- conditions an independent server showed, each with its own rule ----------------------------------------------

async def _against_raw(answer, config, probe):
    """Run `probe` against a plain TCP server on loopback where `answer(reader, writer)` plays the server."""
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        return await _run_url(config, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", only=(probe,))


async def _against_ws(handler, config, probe):
    """Run `probe` against a websockets server on loopback (no health) whose connection handler is `handler`."""
    async with serve(handler, "127.0.0.1", 0, select_subprotocol=lambda c, s: s[0] if s else None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        return await _run_url(config, f"http://127.0.0.1:{port}", only=(probe,))


async def test_secret_missing_is_named_not_unknown(fast_config):
    async with Sandbox(SandboxOptions(secret="s" * 32)) as sb:
        events = await _run_url(fast_config, sb.base_url, env={"OTHER": "x"})
    assert _first_code(events) == "secret-missing"


async def test_connection_dropped_at_the_upgrade(fast_config):
    async def drop(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()

    events = await _against_raw(drop, fast_config, "auth-required")
    assert _first_code(events, "auth-required") == "upgrade-dropped"
    connect = next(e for e in events if isinstance(e, StageFinished) and e.stage == "connect")
    assert "closed before any HTTP answer" in connect.detail


async def test_health_redirect_names_the_location(fast_config):
    async def redirect(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 302 Found\r\nLocation: https://login.example/sso\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    events = await _against_raw(redirect, fast_config, "health")
    assert _first_code(events, "health") == "health-http-error"
    health = next(e for e in events if isinstance(e, StageFinished) and e.stage == "health")
    assert health.detail == "GET /health: HTTP 302 Found → https://login.example/sso"


async def test_health_that_never_answers_is_no_answer(fast_config):
    async def hang(reader, writer):
        await reader.read(1)
        await asyncio.sleep(10)

    config = fast_config.model_copy(update={"timeouts": fast_config.timeouts.model_copy(update={"http": 0.3})})
    events = await _against_raw(hang, config, "health")
    assert _first_code(events, "health") == "no-answer"


async def test_invalid_utf8_is_a_protocol_error(fast_config):
    async def bad_utf8(ws):
        await ws.send(json.dumps({"type": "connection_established"}))
        async for _ in ws:
            await ws.send(b"\xff\xfe not utf-8", text=True)

    events = await _against_ws(bad_utf8, fast_config, "event-order")
    assert _first_code(events, "event-order") == "protocol-error"


async def test_clean_close_mid_run_is_closed_during_run(fast_config):
    async def quits(ws):
        await ws.send(json.dumps({"type": "connection_established"}))
        async for _ in ws:
            await ws.send(json.dumps({"type": "agent_started"}))
            await ws.close(1000, "session cleanup")

    events = await _against_ws(quits, fast_config, "event-order")
    assert _first_code(events, "event-order") == "closed-during-run"


async def test_response_in_a_message_frame_passes(fast_config):
    async def answers_with_message(ws):
        await ws.send(json.dumps({"type": "connection_established", "data": {"user": "u"}}))
        async for _ in ws:
            for name in ("agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed"):
                await ws.send(json.dumps({"type": name, "data": {}}))
            await ws.send(json.dumps({"type": "message", "data": {"text": "4"}}))

    events = await _against_ws(answers_with_message, fast_config, "message-flow")
    failed = [(e.probe_id, e.stage, e.detail) for e in events if isinstance(e, StageFinished)
              and e.status in ("fail", "error")]
    assert failed == []


def _skewed_refusal(skew_s: float, ttl_s: int = 900) -> ProbeModel:
    import email.utils
    now = float(int(time.time()))  # whole seconds: the Date header has no finer resolution
    ev = ProbeModel("p")
    ev.apply(StageStarted(0, "p", "auth", "auth"))
    ev.apply(StageFinished(0, "p", "auth", "pass", 1.0, "minted", AuthEvidence(iat=now, exp=now + ttl_s)))
    ev.apply(StageStarted(0, "p", "connect", "connect"))
    ev.apply(StageFinished(0, "p", "connect", "fail", 1.0, "HTTP 401", ConnectEvidence(
        http_status=401, body='{"detail": "Signature verification failed"}', token_sent=True,
        transport=["header"], date=email.utils.formatdate(now + skew_s, usegmt=True))))
    return ev


@pytest.mark.parametrize("skew_s, first", [(119, "auth-rejected"), (1200, "clock-skew"), (-1200, "clock-skew"),
                                           (-30, "auth-rejected")])
def test_clock_skew_only_when_it_explains_the_refusal(skew_s, first):
    found = diagnose(_skewed_refusal(skew_s))
    assert found[0].code == first, [d.code for d in found]
    if first == "clock-skew":
        assert "UTC" in found[0].evidence[1] and "15 min" in found[0].evidence[1]
        assert not any("not enough" in line for d in found for line in d.evidence)
    elif abs(skew_s) >= 60:  # a skew that does not explain the refusal is still mentioned, as a note
        # the Date header has whole seconds and the check reads the clock a moment later: 118 or 119 s
        assert re.search(r"note: the server's clock is 11[89] s ahead", " ".join(found[0].evidence))


def test_health_without_the_expected_build_field_is_version_unknown():
    ev = ProbeModel("p")
    ev.apply(StageStarted(0, "p", "health", "http"))
    ev.apply(StageFinished(0, "p", "health", "fail", 1.0, "GET /health: no 'version' field to compare with b1",
                           HttpEvidence(http_status=200, expected_version="b1", version_missing=True, body="[]")))
    found = diagnose(ev)
    assert found[0].code == "version-unknown" and "health answered: []" in found[0].evidence
