"""Which hop answered: the signatures of proxies and load balancers on recorded responses (headers, error pages),
and the diagnoses that name the hop — a proxy's 502/504 is not the backend's not-ready."""

from __future__ import annotations

import asyncio

import pytest

from probes.bus import EventBus
from probes.config import resolve_target
from probes.diagnosis import diagnose
from probes.events import Closed, StageFinished, StageStarted
from probes.hops import identify, words
from probes.model import ProbeModel, RunModel
from probes.report import to_json
from probes.runner import RunOptions, run_queue
from probes.steps.connect import ConnectEvidence
from probes.steps.http import HttpEvidence

# Recorded answers (headers as the hop sends them; bodies cut to what identifies them).
GOOGLE_502 = ({"Content-Type": "text/html; charset=UTF-8", "Via": "1.1 google", "Content-Length": "332"},
              "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n  <title>Error 502 (Server Error)!!1</title>"
              "\n  <p><b>502.</b> <ins>That’s an error.</ins>")
ALB_502 = ({"Server": "awselb/2.0", "Content-Type": "text/html"},
           "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
           "</center>\r\n</body>\r\n</html>")
CLOUDFLARE = ({"Server": "cloudflare", "CF-RAY": "8c1f0b6e5f3a1234-FRA", "Content-Type": "application/json"},
              '{"status": "ok"}')
ENVOY_503 = ({"server": "envoy", "content-type": "text/plain"},
             "upstream connect error or disconnect/reset before headers. reset reason: connection failure")
NGINX_502 = ({"Server": "nginx/1.22.1", "Content-Type": "text/html"},
             "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
             "</center>\r\n<hr><center>nginx/1.22.1</center>\r\n</body>\r\n</html>\r\n")
BACKEND = ({"Server": "uvicorn", "Content-Type": "application/json"}, '{"detail": "service starting"}')


@pytest.mark.parametrize("answer, name, kind, produced", [
    (GOOGLE_502, "Google Cloud load balancer", "load balancer", True),
    (ALB_502, "AWS Application Load Balancer", "load balancer", False),
    (CLOUDFLARE, "Cloudflare", "cdn", False),
    (ENVOY_503, "Envoy", "proxy", True),
    (NGINX_502, "nginx", "proxy", True),
    (BACKEND, "backend", "backend", True),
])
def test_signatures_name_the_hop(answer, name, kind, produced):
    headers, body = answer
    hop = identify(headers, body)
    assert (hop["name"], hop["kind"], hop["produced"]) == (name, kind, produced), hop
    assert bool(words(hop)) == (kind != "backend")


def _model(stage: str, step: str, evidence, detail: str, close: Closed | None = None) -> ProbeModel:
    model = ProbeModel("golden-path")
    model.apply(StageStarted(0.0, "golden-path", stage, step))
    if close is not None:
        model.apply(close)
    model.apply(StageFinished(0.1, "golden-path", stage, "fail", 10.0, detail, evidence))
    return model


def test_a_proxy_502_is_upstream_unreachable_with_the_hops_next_step_and_a_backend_503_stays_not_ready():
    hop = identify(*NGINX_502)
    found = diagnose(_model("health", "http", HttpEvidence(url="u", http_status=502, hop=hop), "HTTP 502"))
    assert found[0].code == "upstream-unreachable" and "not-ready" not in [d.code for d in found]
    assert "nginx" in " ".join(found[0].evidence) and "proxy_pass" in found[0].next_step
    hop = identify(*GOOGLE_502)
    found = diagnose(_model("connect", "connect", ConnectEvidence(http_status=504, hop=hop), "HTTP 504"))
    assert found[0].code == "upstream-timeout" and "backend service" in found[0].next_step
    backend = identify(*BACKEND)
    found = diagnose(_model("health", "http", HttpEvidence(url="u", http_status=503, hop=backend), "HTTP 503"))
    assert found[0].code == "not-ready"


def test_a_cut_at_the_named_hops_idle_timer_is_proxy_idle_cut():
    hop = identify({"Server": "awselb/2.0"})
    model = ProbeModel("golden-path")
    model.apply(StageStarted(0.0, "golden-path", "connect", "connect"))
    model.apply(StageFinished(0.1, "golden-path", "connect", "pass", 5.0, "101", ConnectEvidence(http_status=101,
                                                                                                  hop=hop)))
    model.apply(StageStarted(0.2, "golden-path", "agent", "expect_events"))
    model.apply(Closed(60.2, "golden-path", 1006, "Abnormal Closure", "", "none", 60_050.0, False))
    model.apply(StageFinished(60.2, "golden-path", "agent", "fail", 60_000.0, "1006 …"))
    found = diagnose(model)
    assert found[0].code == "proxy-idle-cut", [d.code for d in found]
    assert "ALB idle timeout" in " ".join(found[0].evidence)


async def test_a_proxy_answering_502_for_a_dead_backend_is_named_in_the_stage_and_the_report(fast_config):
    """An nginx-like front of the test's own: its own 502 page for health."""
    async def front(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = NGINX_502[1].encode()
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nServer: nginx/1.22.1\r\nContent-Type: text/html\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(front, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        bus, model = EventBus(), RunModel()
        bus.subscribe(model.apply)
        await run_queue(fast_config, resolve_target(fast_config, url=f"http://127.0.0.1:{port}"), bus,
                        RunOptions(only=("health",), env={}))
    finally:
        server.close()
    probe = model.probes["health"]
    assert "answered by nginx" in probe.stages["health"].detail
    assert probe.diagnoses[0]["code"] == "upstream-unreachable"
    record = to_json(model)["probes"][0]["stages"][0]
    assert record["hop"]["name"] == "nginx" and record["hop"]["produced"] is True
