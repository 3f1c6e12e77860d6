"""What a runtime needs to take traffic: its fail-closed stores reachable, its JWT keys loaded.

`/readyz` and `sidecar.ready` read these checks for the runtime serving now; a reload reads
them for the runtime it would install, so it never swaps a ready sidecar for an unready one.
"""

from __future__ import annotations

from sidecar.runtime import Runtime


async def unready_checks(runtime: Runtime) -> dict[str, str]:
    """The dependency checks `runtime` fails now, by name (empty: it can serve)."""
    checks: dict[str, str] = {}
    quotas = runtime.config.quotas
    if quotas.on_store_error == "fail_closed" and not await runtime.quotas.ready():
        checks["quota_store"] = "unavailable"
    resume = runtime.config.resume
    required = resume.enabled and resume.on_store_error == "fail_closed"
    if required and not await runtime.resume.store.ready():
        checks["resume_store"] = "unavailable"
    if not runtime.auth.ready():
        checks["jwks"] = "no keys loaded"
    return checks
