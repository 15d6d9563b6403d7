"""--metrics-port and --otlp for a run (headless or the app): the listeners, imported only when asked for (their
packages are extras), the /metrics server while the run lasts, and the spans flushed at the end however it ended."""

from __future__ import annotations

import sys
from typing import Any

from .bus import Listener
from .model import RunModel
from .sanitize import one_line


class Telemetry:
    def __init__(self, summary: RunModel | None = None, *, target: str, metrics_port: int | None = None,
                 metrics_host: str = "127.0.0.1", otlp_endpoint: str | None = None, quiet: bool = False) -> None:
        """`summary`: the run's own fold (its watch History gives the monitor states, flips and outages); the app
        sets its own before `start`."""
        self.summary, self.target = summary, target
        self.metrics_port, self.metrics_host, self.otlp_endpoint = metrics_port, metrics_host, otlp_endpoint
        self.quiet = quiet
        self.listeners: list[Listener] = []
        self.metrics: Any = None
        self.otel: Any = None
        self.url: str | None = None  # where /metrics is served

    def start(self) -> bool:
        """False (after one line on stderr) when /metrics cannot be served where asked."""
        if self.metrics_port is not None:
            from .metrics import Metrics

            self.metrics = Metrics(self.summary if self.summary is not None else RunModel())
            try:
                port = self.metrics.serve(self.metrics_port, self.metrics_host)
            except OSError as exc:
                sys.stderr.write(f"stagewatch: error: --metrics-port {self.metrics_port}: "
                                 f"{one_line(str(exc.strerror or exc))}\n")
                self.metrics = None
                return False
            host = f"[{self.metrics_host}]" if ":" in self.metrics_host else self.metrics_host
            self.url = f"http://{one_line(host)}:{port}/metrics"
            if not self.quiet:
                sys.stderr.write(f"stagewatch: metrics: {self.url}\n")
            self.listeners.append(self.metrics.handle)
        if self.otlp_endpoint is not None:
            from .otel import otlp_listener

            self.otel = otlp_listener(self.otlp_endpoint, target=self.target)
            self.listeners.append(self.otel.handle)
        return True

    def close(self) -> str | None:
        """Flush the spans and stop /metrics; a line on stderr (and returned) when spans were not delivered."""
        problem = None
        if self.otel is not None:
            problem = self.otel.close()
            if problem:
                sys.stderr.write(f"stagewatch: warning: {one_line(problem)}\n")
        if self.metrics is not None:
            self.metrics.close()
        return problem
