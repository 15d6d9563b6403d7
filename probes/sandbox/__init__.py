"""The embedded sandbox: a real loopback HTTP + WebSocket server speaking the product's protocol, with faults."""

from .deploy import DeployStep, parse_deploy
from .faults import FAULTS
from .server import SANDBOX_BUILD, Rollout, Sandbox, SandboxOptions

__all__ = ["FAULTS", "SANDBOX_BUILD", "DeployStep", "Rollout", "Sandbox", "SandboxOptions", "parse_deploy"]
