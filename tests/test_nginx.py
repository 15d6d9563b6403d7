"""The engine behind a real nginx: a temporary config per case, nginx on a loopback port in front of the sandbox
(or of nothing, or of a backend that never answers), and what the engine says about each — the stage that fails,
the diagnosis, and the hop the report names.

nginx comes from the system package manager (.ci/run installs it); without it the module is skipped, saying so.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from probes.bus import EventBus
from probes.config import Config, Timeouts, resolve_target
from probes.events import Closed, StageFinished
from probes.report import to_json
from probes.runner import RunOptions, run_queue
from probes.sandbox import Sandbox, SandboxOptions
from tests.conftest import Outcome
from tests.nginx_harness import NGINX, SKIP_REASON, free_port, nginx_proxy, silent_upstream

if NGINX is None:
    pytest.skip(SKIP_REASON, allow_module_level=True)

NGINX_TIMEOUTS = Timeouts(http=3, connect=3, ready=2, agent=5, response=2, close=1)
GUARD_S = 20.0  # a hung run fails its test instead of the suite
GOLDEN_STAGES = ["health", "auth", "connect", "handshake", "message", "agent", "response"]

# What a WebSocket location needs: HTTP/1.1 to the backend and the hop-by-hop upgrade headers passed on.
PASS_UPGRADE = """
    proxy_http_version 1.1;
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection "upgrade";
    proxy_set_header Host $host;
"""
STRIP_AUTH = PASS_UPGRADE + 'proxy_set_header Authorization "";\n'  # a header set to "" is not sent at all
STRIP_BOTH = STRIP_AUTH + 'proxy_set_header Sec-WebSocket-Protocol "";\n'


@pytest.fixture
def config(packaged_config: Config) -> Config:
    return packaged_config.model_copy(update={"timeouts": NGINX_TIMEOUTS})


async def run_through(config: Config, url: str, secret: str, only: tuple[str, ...] = ("golden-path",)) -> Outcome:
    """Run the queue against `url` (nginx), minting tokens with the sandbox's secret; events and the RunModel."""
    bus = EventBus()
    out = Outcome(result=None)  # type: ignore[arg-type]
    bus.subscribe(out.events.append)
    bus.subscribe(out.summary.apply)
    async with asyncio.timeout(GUARD_S):
        out.result = await run_queue(config, resolve_target(config, url=url), bus,
                                     RunOptions(only=only, env={"JWT_SECRET_KEY": secret}))
    assert not bus.failures, bus.failures
    return out


def record(out: Outcome, probe: str) -> dict[str, Any]:
    """The probe as the JSON report has it (stages with their hop, close, diagnoses)."""
    return next(p for p in to_json(out.summary)["probes"] if p["id"] == probe)


def stage_record(out: Outcome, probe: str, stage: str) -> dict[str, Any]:
    return next(s for s in record(out, probe)["stages"] if s["name"] == stage)


def codes(out: Outcome, probe: str) -> list[str]:
    return [d["code"] for d in record(out, probe)["diagnoses"]]


def shown(out: Outcome, probe: str) -> str:
    """The probe's report record, for an assertion's message."""
    return json.dumps(record(out, probe), indent=1)


def assert_nginx_hop(stage: dict[str, Any], *, produced: bool) -> None:
    hop = stage.get("hop")
    assert hop is not None, f"stage {stage['name']} names no hop: {stage}"
    assert (hop["name"], hop["kind"]) == ("nginx", "proxy"), hop
    assert "Server: nginx/" in hop["why"], hop
    assert hop["produced"] is produced, hop


async def echoed_headers(url: str) -> dict[str, str]:
    """What the sandbox's /debug/echo-headers saw of a request carrying both credentials, through nginx."""
    async with httpx.AsyncClient(timeout=3) as client:
        resp = await client.get(url + "/debug/echo-headers", headers={
            "Authorization": "Bearer not-a-token", "Sec-WebSocket-Protocol": "jwt.bm90LWEtdG9rZW4"})
    assert resp.status_code == 200, resp.text
    assert resp.headers.get("server", "").startswith("nginx"), resp.headers
    headers: dict[str, str] = resp.json()["headers"]
    return headers


async def test_healthy_pass_through(config: Config, tmp_path: Path) -> None:
    async with Sandbox() as sb, nginx_proxy(tmp_path, sb.port, PASS_UPGRADE) as nginx:
        out = await run_through(config, nginx.url, sb.secret, only=())
        seen = await echoed_headers(nginx.url)
        access = (nginx.root / "access.log").read_text()
    assert out.result.verdict == "pass", [shown(out, p.probe_id) for p in out.result.probes if p.status != "pass"]
    assert all(p.status == "pass" for p in out.result.probes)
    golden = [e.stage for e in out.events if isinstance(e, StageFinished) and e.probe_id == "golden-path"]
    assert golden == GOLDEN_STAGES
    assert "subprotocol echoed" in out.stage("golden-path", "connect").detail
    assert "refused with HTTP 401" in out.stage("auth-required", "connect").detail
    close = next(e for e in out.events if isinstance(e, Closed) and e.probe_id == "golden-path")
    assert (close.code, close.by) == (1000, "client")
    # the answers went through nginx (its Server header replaced the sandbox's), they were not made by it
    assert_nginx_hop(stage_record(out, "golden-path", "health"), produced=False)
    assert_nginx_hop(stage_record(out, "golden-path", "connect"), produced=False)
    assert "authorization" in seen and "sec-websocket-protocol" in seen
    assert '"GET /ws HTTP/1.1" 101' in access, access


async def test_authorization_stripped_the_subprotocol_still_authenticates(config: Config, tmp_path: Path) -> None:
    async with Sandbox() as sb, nginx_proxy(tmp_path, sb.port, STRIP_AUTH) as nginx:
        out = await run_through(config, nginx.url, sb.secret)
        seen = await echoed_headers(nginx.url)
    assert out.result.verdict == "pass", shown(out, "golden-path")
    assert "subprotocol echoed" in out.stage("golden-path", "connect").detail
    assert "authorization" not in seen, seen
    assert seen.get("sec-websocket-protocol"), seen
    assert codes(out, "golden-path") == []


async def test_both_credentials_stripped_fails_at_connect(config: Config, tmp_path: Path) -> None:
    async with Sandbox() as sb, nginx_proxy(tmp_path, sb.port, STRIP_BOTH) as nginx:
        out = await run_through(config, nginx.url, sb.secret)
        seen = await echoed_headers(nginx.url)
    assert "authorization" not in seen and "sec-websocket-protocol" not in seen, seen
    failed = out.failed_stage("golden-path")
    assert failed is not None and failed.stage == "connect", shown(out, "golden-path")
    assert getattr(failed.evidence, "http_status") == 401
    assert "HTTP 401" in failed.detail
    connect = stage_record(out, "golden-path", "connect")
    assert_nginx_hop(connect, produced=False)  # the backend's 401, passed on by nginx
    found = codes(out, "golden-path")
    assert found[:1] == ["proxy-strips-auth"], shown(out, "golden-path")
    assert "auth-header-stripped" in found
    first = record(out, "golden-path")["diagnoses"][0]
    assert "nginx" in " ".join(first["evidence"]) and "proxy_set_header" in first["next_step"], first


# How a location fails to pass the upgrade on: nginx's defaults (HTTP/1.0 to the backend, and Upgrade/Connection
# are hop-by-hop so never passed on), or HTTP/1.1 without the two proxy_set_header lines.
NO_UPGRADE = {
    "http-1.0-default": "proxy_set_header Host $host;",
    "http-1.1-no-upgrade-headers": "proxy_http_version 1.1;\nproxy_set_header Host $host;",
}


@pytest.mark.parametrize("how", list(NO_UPGRADE))
async def test_upgrade_not_forwarded(config: Config, tmp_path: Path, how: str) -> None:
    async with Sandbox() as sb, nginx_proxy(tmp_path, sb.port, NO_UPGRADE[how]) as nginx:
        out = await run_through(config, nginx.url, sb.secret)
    assert out.stage("golden-path", "health").status == "pass", shown(out, "golden-path")
    failed = out.failed_stage("golden-path")
    assert failed is not None and failed.stage == "connect", shown(out, "golden-path")
    assert sb.connections == 0  # no WebSocket session ever reached the sandbox
    assert_nginx_hop(stage_record(out, "golden-path", "connect"), produced=False)  # the backend's refusal
    assert codes(out, "golden-path")[:1] == ["no-upgrade"], shown(out, "golden-path")


async def test_backend_down_is_a_502_from_nginx(config: Config, tmp_path: Path) -> None:
    async with nginx_proxy(tmp_path, free_port(), PASS_UPGRADE) as nginx:
        out = await run_through(config, nginx.url, "s" * 32, only=("health", "golden-path"))
        log = nginx.error_log()
    assert "connect() failed (111: Connection refused)" in log, log
    failed = out.failed_stage("health")
    assert failed is not None and failed.stage == "health", shown(out, "health")
    assert getattr(failed.evidence, "http_status") == 502
    assert codes(out, "health")[:1] == ["upstream-unreachable"], shown(out, "health")
    assert "not-ready" not in codes(out, "health")
    assert_nginx_hop(stage_record(out, "health", "health"), produced=True)  # nginx's own error page
    assert codes(out, "golden-path")[:1] == ["upstream-unreachable"], shown(out, "golden-path")


async def test_backend_too_slow_is_a_504_from_nginx(config: Config, tmp_path: Path) -> None:
    async with silent_upstream() as port, \
            nginx_proxy(tmp_path, port, PASS_UPGRADE + "proxy_read_timeout 1s;") as nginx:
        out = await run_through(config, nginx.url, "s" * 32, only=("health",))
        log = nginx.error_log()
    assert "upstream timed out" in log, log
    failed = out.failed_stage("health")
    assert failed is not None and getattr(failed.evidence, "http_status") == 504, shown(out, "health")
    assert codes(out, "health")[:1] == ["upstream-timeout"], shown(out, "health")
    assert "not-ready" not in codes(out, "health")
    assert_nginx_hop(stage_record(out, "health", "health"), produced=True)


async def test_read_timeout_shorter_than_the_agent_run(config: Config, tmp_path: Path) -> None:
    # nginx's proxy_read_timeout (2 s) cuts the upgraded connection while the agent is silent (3 s per event)
    async with Sandbox(SandboxOptions(fault="slow-agent", delay=3.0)) as sb, \
            nginx_proxy(tmp_path, sb.port, PASS_UPGRADE + "proxy_read_timeout 2s;") as nginx:
        out = await run_through(config, nginx.url, sb.secret)
        log = nginx.error_log()
    assert "upstream timed out" in log, log
    failed = out.failed_stage("golden-path")
    assert failed is not None and failed.stage == "agent", shown(out, "golden-path")
    close = record(out, "golden-path")["close"]
    assert close is not None and (close["code"], close["by"]) == (1006, "none"), close
    # cut about 2 s after the last frame (our message, right after the ready frame), long before the agent timeout
    assert 1800 <= close["after_ms"] <= 3500, close
    assert_nginx_hop(stage_record(out, "golden-path", "connect"), produced=False)  # the 101 came through nginx
    found = codes(out, "golden-path")
    # 2 s matches no known timer (nginx's default is 60 s): a drop without a close frame, not yet a named cut
    assert found[:1] == ["abnormal-close"], shown(out, "golden-path")
    assert "proxy-idle-cut" not in found
