"""The production guard: whether a host looks like production, unless the config's non-production patterns name it.
Every front end (the CLI, the app's target switch) asks this one function."""

from __future__ import annotations

import re


def looks_like_production(host: str, patterns: list[str]) -> bool:
    """True unless a pattern names the host: an address or `localhost` must be the whole host; a word such as
    `staging` must be a whole label or dash-separated part of one (api.staging.x, staging-api.x), so that
    `latest-news.com` or `localhost.evil.com` do not pass for non-production."""
    host = host.lower().strip("[]")
    for pattern in (p.lower().strip("[]") for p in patterns):
        if pattern == host:
            return False
        if pattern == "localhost" or ":" in pattern or re.fullmatch(r"[\d.]+", pattern):
            continue  # an address or localhost names one host, never a part of another
        if re.search(rf"(?:^|[.-]){re.escape(pattern)}(?:$|[.-])", host):
            return False  # 'staging', 'pre-prod', 'staging.example.com' between label or dash boundaries
    return True
