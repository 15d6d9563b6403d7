"""Shared test helpers: the packaged config with short timeouts, and a one-call run against the sandbox."""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass, field

import pytest

from probes.bus import EventBus
from probes.config import Config, Timeouts, load_config, resolve_target
from probes.events import Event, StageFinished
from probes.model import RunModel
from probes.report import to_json
from probes.runner import RunOptions, RunResult, run_queue
from probes.sandbox import SandboxOptions

FAST = Timeouts(http=2, connect=2, ready=0.5, agent=0.6, response=0.3, close=0.5)


@dataclass
class Outcome:
    result: RunResult
    events: list[Event] = field(default_factory=list)
    summary: RunModel = field(default_factory=RunModel)

    def stage(self, probe: str, stage: str) -> StageFinished:
        return next(e for e in self.events if isinstance(e, StageFinished) and e.probe_id == probe
                    and e.stage == stage)

    def failed_stage(self, probe: str) -> StageFinished | None:
        return next((e for e in self.events if isinstance(e, StageFinished) and e.probe_id == probe
                     and e.status in ("fail", "error")), None)

    def probe(self, probe: str) -> dict:
        return next(p for p in to_json(self.summary)["probes"] if p["id"] == probe)


@pytest.fixture(scope="session")
def packaged_config() -> Config:
    return load_config(None)


@pytest.fixture(scope="session")
def fast_config(packaged_config: Config) -> Config:
    return packaged_config.model_copy(update={"timeouts": FAST})


async def run_sandbox(config: Config, fault: str = "none", *, only: tuple[str, ...] = (),
                      sandbox: SandboxOptions | None = None, **options: object) -> Outcome:
    bus = EventBus()
    outcome = Outcome(result=None)  # type: ignore[arg-type]
    bus.subscribe(outcome.events.append)
    bus.subscribe(outcome.summary.apply)
    target = resolve_target(config, "sandbox")
    if sandbox is not None:
        sandbox.fault = fault
    run_options = RunOptions(fault=fault, only=only, sandbox_options=sandbox, **options)  # type: ignore[arg-type]
    outcome.result = await run_queue(config, target, bus, run_options)
    return outcome


async def _url_run(config: Config, url: str, only: tuple[str, ...], *, skip_health: bool = False,
                   env: dict[str, str] | None = None) -> list[Event]:
    """Run probes against any loopback server with the default protocol and a known JWT secret."""
    if skip_health:
        probes = []
        for p in config.probes:
            steps = [s for s in p.steps if s.step != "http"] or p.steps
            probes.append(p.model_copy(update={"steps": steps}))
        config = config.model_copy(update={"probes": probes})
    bus = EventBus()
    events: list[Event] = []
    bus.subscribe(events.append)
    target = resolve_target(config, url=url)
    await run_queue(config, target, bus, RunOptions(only=only, env=env or {"JWT_SECRET_KEY": "k" * 32}))
    return events


@pytest.fixture(scope="session")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A server TLS context with a self-signed certificate for 127.0.0.1, valid one day (made here, no openssl)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    d = tmp_path_factory.mktemp("tls")
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(d / "cert.pem", d / "key.pem")
    return context
