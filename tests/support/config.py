"""Config validation as the tests read it: the problems a config is refused with."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar import loader
from sidecar.config import Config


def problems_of(source: str | dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    """The problems validation reports for a config given as YAML text or as plain data."""
    data = loader.parse_yaml(source, "test.yaml") if isinstance(source, str) else source
    with pytest.raises(loader.ConfigError) as caught:
        loader.validate(data, env or {})
    return caught.value.problems


def refused_per_route(section: str) -> set[str]:
    """The keys of `section` a route may not override: each tried alone, at its default."""
    defaults = getattr(Config(), section).model_dump(mode="json")
    refused = set()
    for key in defaults:
        route = {"path": "/a", "handler": "anthropic", section: {key: defaults[key]}}
        try:
            loader.validate({"routes": [route]}, {})
        except loader.ConfigError as error:
            if f"routes.0.{section}.{key}: can only be set at the top level" in error.problems:
                refused.add(key)
    return refused
