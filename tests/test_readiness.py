"""A runtime can take traffic when every store it must not do without answers and its JWT
keys are loaded; a store it may do without (fail open, resume off) never makes it unready."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from sidecar.readiness import unready_checks
from sidecar.runtime import Runtime


class Ready:
    """A store or auth service that answers whether it is ready."""

    def __init__(self, ready: bool) -> None:
        self._ready = ready

    async def ready_async(self) -> bool:
        return self._ready

    def ready_now(self) -> bool:
        return self._ready


def runtime(
    *,
    quotas_mode: str = "fail_closed",
    quotas_up: bool = True,
    resume_on: bool = True,
    resume_mode: str = "fail_closed",
    resume_up: bool = True,
    keys: bool = True,
) -> Runtime:
    """The parts of a runtime the checks read."""
    fake: Any = SimpleNamespace(
        config=SimpleNamespace(
            quotas=SimpleNamespace(on_store_error=quotas_mode),
            resume=SimpleNamespace(enabled=resume_on, on_store_error=resume_mode),
        ),
        quotas=SimpleNamespace(ready=Ready(quotas_up).ready_async),
        resume=SimpleNamespace(store=SimpleNamespace(ready=Ready(resume_up).ready_async)),
        auth=SimpleNamespace(ready=Ready(keys).ready_now),
    )
    return cast(Runtime, fake)


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ({}, {}),
        ({"quotas_up": False}, {"quota_store": "unavailable"}),
        ({"quotas_up": False, "quotas_mode": "fail_open"}, {}),
        ({"resume_up": False}, {"resume_store": "unavailable"}),
        ({"resume_up": False, "resume_mode": "fail_open"}, {}),
        ({"resume_up": False, "resume_on": False}, {}),
        ({"keys": False}, {"jwks": "no keys loaded"}),
        ({"quotas_up": False, "resume_up": False, "keys": False},
         {"quota_store": "unavailable", "resume_store": "unavailable", "jwks": "no keys loaded"}),
    ],
)  # fmt: skip
async def test_unready_checks_name_each_dependency_the_runtime_needs_and_lacks(
    parts: dict[str, Any], expected: dict[str, str]
) -> None:
    assert await unready_checks(runtime(**parts)) == expected
