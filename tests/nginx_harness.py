"""A real nginx on loopback in front of a test's backend: one temporary config and one nginx per case.

`async with nginx_proxy(tmp_path, upstream_port, directives) as proxy:` writes `<tmp>/nginx.conf` (every path it
writes — pid, logs, temp dirs — inside `tmp`, nothing under /var), checks it with `nginx -t` (a rejected config
fails the test with nginx's own words), starts `nginx -g 'daemon off;'` on a free 127.0.0.1 port and returns once
nginx has bound it (its pid file is written after the bind) and accepts a TCP connection. `directives` go into the
one `location /`, after `proxy_pass http://up;` (the upstream named `up` is 127.0.0.1:`upstream_port`). On exit:
SIGTERM (fast shutdown: a graceful SIGQUIT would wait for open WebSockets), then the group is killed if nginx is
still there at the deadline.

nginx cannot listen on port 0: a port is picked by binding 127.0.0.1:0 and closing it, and picked again if nginx
reports it taken meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

SKIP_REASON = "nginx not installed: .ci/run installs it (apt-get install nginx-light)"
START_S = 10.0  # nginx retries a taken port 5 times, 0.5 s apart, before it gives up
STOP_S = 5.0
PORT_TRIES = 3


def find_nginx() -> str | None:
    """The nginx binary: on PATH, or where Debian puts it (/usr/sbin is not on every user's PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(path, os.X_OK):
            return path
    return None


NGINX = find_nginx()


@cache
def nginx_version() -> str:
    """`nginx -V`'s whole output (the version line and the configure arguments)."""
    assert NGINX is not None
    done = subprocess.run([NGINX, "-V"], capture_output=True, text=True, timeout=10, check=False)
    return (done.stderr or done.stdout).strip()


def _temp_paths(root: Path) -> str:
    """Every temp path this build knows, inside `root` (the packaged defaults are under /var/lib/nginx)."""
    built = nginx_version()
    lines = [f"client_body_temp_path {root}/client_body;", f"proxy_temp_path {root}/proxy;"]
    for module in ("fastcgi", "uwsgi", "scgi"):
        if f"--without-http_{module}_module" not in built:
            lines.append(f"{module}_temp_path {root}/{module};")
    return "\n    ".join(lines)


def render_config(root: Path, port: int, upstream_port: int, directives: str) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""  # else workers become nobody, who cannot write in root
    return f"""# written by tests/nginx_harness.py
{user}worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {root}/access.log;
    {_temp_paths(root)}
    upstream up {{ server 127.0.0.1:{upstream_port}; }}
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        location / {{
            proxy_pass http://up;
            {directives.strip()}
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Nginx:
    root: Path
    port: int
    proc: asyncio.subprocess.Process

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def conf(self) -> str:
        return (self.root / "nginx.conf").read_text()

    def logs(self) -> str:
        """nginx's stderr and error log, for a failure message."""
        parts = []
        for name in ("stderr.log", "error.log"):
            path = self.root / name
            if path.exists() and path.read_text(errors="replace").strip():
                parts.append(f"--- {name}\n{path.read_text(errors='replace').strip()}")
        return "\n".join(parts) or "(nginx logged nothing)"

    def error_log(self) -> str:
        path = self.root / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _check(root: Path) -> None:
    assert NGINX is not None
    done = subprocess.run([NGINX, "-t", "-p", f"{root}/", "-c", str(root / "nginx.conf"), "-g", "daemon off;"],
                          capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        pytest.fail(f"nginx -t rejected the test's config:\n{done.stderr or done.stdout}\n"
                    f"--- nginx.conf\n{(root / 'nginx.conf').read_text()}", pytrace=False)


async def _started(nginx: Nginx, deadline: float) -> bool:
    """True once nginx has bound its port and accepts; False if it exited because the port was taken."""
    pid_file = nginx.root / "nginx.pid"
    while time.monotonic() < deadline:
        if nginx.proc.returncode is not None:
            if "Address already in use" in nginx.logs():
                return False
            pytest.fail(f"nginx exited with {nginx.proc.returncode} at start:\n{nginx.logs()}", pytrace=False)
        # nginx writes its pid file after it has bound every listen address (a stranger on the port cannot pass)
        if pid_file.exists() and pid_file.read_text().strip() == str(nginx.proc.pid):
            with suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", nginx.port)
                writer.close()
                with suppress(OSError):
                    await writer.wait_closed()
                return True
        await asyncio.sleep(0.02)  # polled condition, bounded by the deadline
    pytest.fail(f"nginx did not accept on 127.0.0.1:{nginx.port} within {START_S:g} s:\n{nginx.logs()}",
                pytrace=False)


async def _stop(nginx: Nginx) -> None:
    proc = nginx.proc
    if proc.returncode is None:
        with suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)  # fast shutdown: open upgraded connections are cut, not awaited
        try:
            await asyncio.wait_for(proc.wait(), STOP_S)
        except TimeoutError:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the master and its workers
            await proc.wait()
            pytest.fail(f"nginx ignored SIGTERM for {STOP_S:g} s:\n{nginx.logs()}", pytrace=False)


@asynccontextmanager
async def nginx_proxy(tmp: Path, upstream_port: int, directives: str) -> AsyncIterator[Nginx]:
    if NGINX is None:
        pytest.skip(SKIP_REASON)
    root = tmp / "nginx"
    root.mkdir(parents=True, exist_ok=True)
    for attempt in range(PORT_TRIES):
        port = free_port()
        (root / "nginx.conf").write_text(render_config(root, port, upstream_port, directives))
        (root / "nginx.pid").unlink(missing_ok=True)
        _check(root)
        with open(root / "stderr.log", "wb") as err:
            proc = await asyncio.create_subprocess_exec(
                NGINX, "-p", f"{root}/", "-c", str(root / "nginx.conf"), "-g", "daemon off;",
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
        nginx = Nginx(root, port, proc)
        try:
            ready = await _started(nginx, time.monotonic() + START_S)
        except BaseException:
            await _stop(nginx)
            raise
        if not ready:
            await _stop(nginx)
            continue
        try:
            yield nginx
        finally:
            await _stop(nginx)
        return
    pytest.fail(f"nginx found its port taken {PORT_TRIES} times in a row:\n{nginx.logs()}", pytrace=False)


@asynccontextmanager
async def silent_upstream() -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 that accepts and reads but never answers (a hung backend); yields its port."""
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with suppress(ConnectionError):
            while await reader.read(65536):
                pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()
