"""The benchmark's peers: each a process on loopback in front of one fake Claude.

direct (no proxy, the reference), the floor (`floor_relay.py`, a bare uvloop byte
relay), nginx (generated config, `proxy_buffering off`, upstream keepalive; only
when installed), the naive aiohttp passthrough and the sidecar in several configs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from common import free_port, rss_kib  # bench/ is on the path as the script's folder

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
API_KEY = "bench-key-0123456789"
NGINX_PATHS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


@dataclass
class Target:
    """One peer as the load client sees it; `pid` None for direct (nothing to measure)."""

    name: str
    kind: str  # direct | floor | nginx | naive | sidecar
    url: str
    pid: int | None
    key: str = ""
    route: str = "anthropic"  # or "prompt": the sidecar's simple route, {"token": ...} events
    rss_start_kib: int | None = None  # resident memory once it answered, before any load
    headers: dict[str, str] = field(default_factory=dict)  # sent on every call (e.g. resume)


def wait_http(url: str, timeout: float = 30) -> None:
    """Return once `url` answers anything (a 4xx/5xx counts), or raise after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@dataclass
class Launch:
    """A peer's process, to be started with the others (`launch`)."""

    target: Target
    args: list[str]
    ready_url: str
    env: dict[str, str] | None = None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def launch(stack: contextlib.ExitStack, launches: list[Launch]) -> list[Target]:
    """Start every process at once, then wait for each to answer (stopped when `stack` closes).

    Each target gets its pid and its RSS once it answered (before any load).
    """
    started = []
    for item in launches:
        log = stack.enter_context(tempfile.TemporaryFile())  # noqa: SIM115  (closed by `stack`)
        proc = subprocess.Popen(
            item.args, cwd=ROOT, stdout=log, stderr=log, env={**os.environ, **(item.env or {})}
        )
        stack.callback(_stop, proc)
        started.append((item, proc, log))
    for item, proc, log in started:
        try:
            wait_http(item.ready_url)
        except RuntimeError:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-4000:])
            raise
        item.target.pid = proc.pid
        item.target.rss_start_kib = rss_kib(proc.pid)
    return [item.target for item in launches]


@contextlib.contextmanager
def process(args: list[str], ready_url: str, env: dict[str, str] | None = None) -> Iterator[int]:
    """One child process, yielded (as its pid) once `ready_url` answers; stopped with SIGTERM."""
    with contextlib.ExitStack() as stack:
        (target,) = launch(stack, [Launch(Target("", "", "", None), args, ready_url, env)])
        assert target.pid is not None
        yield target.pid


def fake_and_sink(stack: contextlib.ExitStack) -> tuple[str, int, str]:
    """The fake Claude and the OTLP sink as processes of their own (stopped with `stack`):
    the fake's URL and port, the sink's URL."""
    fake_port, otlp_port = free_port(), free_port()
    fake = f"http://127.0.0.1:{fake_port}"
    otlp = f"http://127.0.0.1:{otlp_port}"
    stack.enter_context(process(
        [PY, "-m", "sidecar.fake_claude", "--port", str(fake_port), "--host", "127.0.0.1"],
        fake + "/_fake/stats",
    ))  # fmt: skip
    stack.enter_context(process(
        [PY, str(ROOT / "bench" / "otlp_sink.py"), "--port", str(otlp_port)], otlp + "/"
    ))  # fmt: skip
    return fake, fake_port, otlp


def floor(upstream: str) -> Launch:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [PY, str(ROOT / "bench" / "floor_relay.py"), "--port", str(port), "--upstream", upstream]
    return Launch(Target("floor (uvloop byte relay)", "floor", url, None), args, url + "/")


def naive(upstream: str) -> Launch:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [PY, str(ROOT / "bench" / "naive_proxy.py"), "--port", str(port),
            "--upstream", upstream, "--uvloop"]  # fmt: skip
    return Launch(Target("naive aiohttp", "naive", url, None), args, url + "/")


def nginx_binary() -> str | None:
    """The nginx executable, if one is installed."""
    found = shutil.which("nginx")
    if found:
        return found
    return next((p for p in NGINX_PATHS if os.access(p, os.X_OK)), None)


def nginx_config(directory: Path, port: int, upstream_port: int) -> str:
    """One process, no daemon, every file under `directory`; streams unbuffered.

    `master_process off` keeps the worker in the process the harness started, so its
    CPU and RSS are that pid's (nginx's docs call this mode for development; the
    event loop and proxy module are the same as a worker's).
    """
    temp = {name: directory / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(exist_ok=True)
    return f"""
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 16384;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    upstream claude {{
        server 127.0.0.1:{upstream_port};
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        client_max_body_size 32m;
        location / {{
            proxy_pass http://claude;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def nginx(stack: contextlib.ExitStack, upstream_port: int) -> Launch | str:
    """nginx in front of the fake (its files in a temp folder `stack` removes), or why not."""
    binary = nginx_binary()
    if binary is None:
        return "nginx is not installed: its rows are skipped"
    directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-nginx-")))
    port = free_port()
    config = directory / "nginx.conf"
    config.write_text(nginx_config(directory, port, upstream_port))
    url = f"http://127.0.0.1:{port}"
    # -e: the startup error log too (the compiled-in default is not writable by a user).
    args = [binary, "-p", str(directory), "-c", str(config), "-e", str(directory / "error.log")]
    check = subprocess.run([*args, "-t", "-q"], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        return f"nginx refused its config, its rows are skipped: {check.stderr[-300:].strip()}"
    return Launch(Target("nginx", "nginx", url, None), args, url + "/")


def resume_supported() -> bool:
    """Whether this sidecar's config has a `resume` section (resumable streams)."""
    from sidecar.config import Config

    return "resume" in Config.model_fields


def sidecar_config(upstream: str, port: int, admin: int, mode: str) -> dict[str, Any]:
    """The sidecar's config for one benchmark mode: all | resume | no-telemetry | bare."""
    full = mode != "bare"
    config: dict[str, Any] = {
        "server": {"listen": f"127.0.0.1:{port}", "admin_listen": f"127.0.0.1:{admin}"},
        "claude": {
            "base_url": upstream,
            "api_key": "sk-bench",
            "max_concurrent_streams": 4096,
            "idle_timeout_seconds": 600,
        },
        "telemetry": {"prometheus": full, "access_log": full, "log_level": "INFO"},
    }
    if full:
        config |= {
            "auth": {
                "mode": "required",
                "api_keys": [
                    {
                        "name": "bench",
                        "sha256": hashlib.sha256(API_KEY.encode()).hexdigest(),
                        "user": "bench",
                    }
                ],
            },
            "cors": {"allow_origins": ["https://app.example.com"], "allow_credentials": True},
            "screening": {"deny_patterns": ["(?i)ignore (all )?previous instructions", "BEGIN"]},
            "quotas": {
                "store": "memory",
                "requests_per_minute": 1_000_000,
                "tokens_per_minute": 1_000_000_000,
                "concurrent_streams": 10_000,
            },
        }
    if mode == "resume":
        config["resume"] = {"enabled": True, "store": "memory"}
    return config


def sidecar(stack: contextlib.ExitStack, name: str, upstream: str, otlp: str, mode: str) -> Launch:
    """The sidecar as its own process: `all` (every policy, OTLP export), `resume` (all +
    resume, memory store), `no-telemetry` (policies, OTEL_SDK_DISABLED) or `bare`."""
    port, admin = free_port(), free_port()
    config = sidecar_config(upstream, port, admin, mode)
    env: dict[str, str] = {}
    if mode in ("all", "resume"):
        config["telemetry"]["otlp_endpoint"] = otlp
    else:
        env["OTEL_SDK_DISABLED"] = "true"
        config["telemetry"] |= {"prometheus": False, "access_log": False}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump(config, handle)
    stack.callback(os.unlink, handle.name)
    target = Target(name, "sidecar", f"http://127.0.0.1:{port}", None)
    target.key = API_KEY if mode != "bare" else ""
    if mode == "resume":  # resume is opt-in per request on the Anthropic route
        target.headers = {"Sidecar-Resume": "on"}
    args = [PY, "-m", "sidecar", "run", "-c", handle.name]
    return Launch(target, args, f"http://127.0.0.1:{admin}/healthz", env)
