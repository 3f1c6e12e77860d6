"""Config validation as the tests read it: the problems a config is refused with."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar import loader


def problems_of(source: str | dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    """The problems validation reports for a config given as YAML text or as plain data."""
    data = loader.parse_yaml(source, "test.yaml") if isinstance(source, str) else source
    with pytest.raises(loader.ConfigError) as caught:
        loader.validate(data, env or {})
    return caught.value.problems
