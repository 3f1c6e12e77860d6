"""`sidecar health`: ask a running sidecar's admin listener whether it is alive (or ready),
for a container `HEALTHCHECK` in an image that has no curl."""

from __future__ import annotations

import urllib.error
import urllib.request

from sidecar.config import Config, split_host_port

# No proxy: an `HTTP_PROXY` in the container's environment must not carry a local probe.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# Where a wildcard listen address is reached from inside the same container.
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def admin_url(config: Config, path: str) -> str:
    """`path` on the admin listener `config` names, as a client on the same host reaches it."""
    host, port = split_host_port(config.server.admin_listen)
    host = _LOOPBACK.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"


def probe(url: str, timeout: float) -> str | None:
    """None when `url` answers 200 within `timeout` seconds, else the one-line reason."""
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:  # refused, timed out, unreachable
        reason = getattr(exc, "reason", exc)
        return f"{url}: {reason}"
    return None if status == 200 else f"{url}: HTTP {status}"
