"""The sandbox's fault switch: every failure mode it can show, with what a person should expect to see."""

from __future__ import annotations

FAULTS: dict[str, str] = {
    "none": "healthy: every probe passes",
    "closed-before-ready": "accepts the upgrade, then closes 1000 'main cleanup' 50 ms later, before "
                           "connection_established",
    "auth-rejected": "answers the upgrade with HTTP 403 Forbidden",
    "auth-close": "accepts, then closes 1008 Policy Violation 'invalid token'",
    "strip-auth": "behaves as if a proxy removed Authorization and Sec-WebSocket-Protocol: the backend sees no "
                  "token (HTTP 401) and /debug/echo-headers shows neither",
    "strip-auth-header": "behaves as if a load balancer removed Authorization only: the jwt. subprotocol still "
                         "reaches the backend and authenticates; /debug/echo-headers shows no Authorization",
    "server-error": "closes 1011 Internal Error in the middle of the agent run",
    "abnormal-close": "drops the TCP connection mid-run without a close frame (1006)",
    "restart": "closes 1012 Service Restart in the middle of the agent run",
    "version-mismatch": "health reports a stale build (not the sandbox's release build)",
    "not-ready": "health and the upgrade answer 503 Service Unavailable (cold start)",
    "no-upgrade": "answers the WebSocket path with 200 and an HTML page (path wrong / proxy not upgrading)",
    "subprotocol-not-echoed": "accepts without echoing the offered subprotocol (browsers refuse such a handshake)",
    "clock-skew": "its clock is 20 minutes ahead: Date header off and the fresh token refused as expired (HTTP 401)",
    "missing-events": "never sends tool_executing and tool_completed",
    "events-out-of-order": "sends agent_thinking before agent_started",
    "slow-agent": "agent events arrive slower than the agent timeout (delay: --delay, default 35 s)",
    "empty-response": "agent_completed carries no response text",
    "error-frame": "sends an error frame instead of the agent run",
    "garbage": "sends non-JSON text and binary frames before anything else",
    "silent": "accepts the upgrade and never sends a frame",
    "flood": "answers a message with N filler frames (--flood N, default 10000) before the agent events",
    "huge-frame": "answers a message with one 10 MB frame (over the client's 1 MiB max_size: 1009)",
    "rolling-restart": "2 s after start, a rolling restart: from then on every request answers 503; the open sessions "
                       "are closed one by one in open order over 2 s, every 10th dropped with no close frame (1006), "
                       "the rest 1012 'service restart'; 1 s after that window a new build answers",
    "idle-timeout": "every session ends 3 s after its accept whatever its traffic (pings included), TCP dropped "
                    "with no close frame (1006): a proxy's max connection age",
}

DEFAULT_FLOOD = 10_000
ROLLING_RESTART = "rolling-restart"  # timings and counts: SandboxOptions (drain_s, drop_every, refuse_s, rolling_at)
IDLE_TIMEOUT = "idle-timeout"  # SandboxOptions.idle_after_s, idle_close_code
