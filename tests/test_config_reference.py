"""docs/configuration.md and config/sidecar.example.yaml against the typed config.

Every key a user can write is in the reference with the default the code uses, every
key the reference names exists, and the example config shows every key (its CORS lists
are the defaults, so a copy of it loses none of the headers the sidecar relies on).
"""

from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from sidecar.config import CacheConfig, Config
from tests.support.config import refused_per_route

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = (ROOT / "docs" / "configuration.md").read_text()
EXAMPLE = ROOT / "config" / "sidecar.example.yaml"
# Mappings whose keys are the user's own (model names, attribute names), not config keys.
FREE_FORM = {"telemetry.prices", "telemetry.resource_attributes"}


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds (directly, optionally, or as list items), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType, list):
        for arg in get_args(annotation):
            found = _section_model(arg)
            if found is not None:
                return found
    return None


def code_keys(model: type[BaseModel] = Config, prefix: str = "") -> dict[str, Any]:
    """Every key of the config as `section.key` (list items' keys under the list's name)."""
    keys: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        path = prefix + name
        keys[path] = field.get_default(call_default_factory=True)
        sub = _section_model(field.annotation)
        if sub is not None and path != "routes" and path not in FREE_FORM:
            keys.update(code_keys(sub, path + "."))
    return keys


def reference_keys() -> dict[str, str | None]:
    """`section.key` → the default cell, from the reference's per-section tables."""
    keys: dict[str, str | None] = {}
    section = None
    for line in REFERENCE.splitlines():
        heading = re.match(r"## (\w+)$", line)
        if heading:
            section = heading[1]
        elif section and line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            names = re.findall(r"`([^`]+)`", cells[0])
            defaults = [d.strip() for d in cells[1].split(",")] if len(cells) > 2 else []
            if len(defaults) != len(names) and re.fullmatch(r"`[^`]*`", cells[1]):
                defaults = [cells[1]] * len(names)  # `null` for both, `[GET, POST]` for one
            for i, name in enumerate(names):
                default = defaults[i] if len(defaults) == len(names) else None
                keys[f"{section}.{name.removesuffix('[]')}"] = default
    return keys


def test_every_key_is_in_the_reference_and_every_key_there_exists() -> None:
    code = code_keys()
    reference = reference_keys()
    sections = {key for key, value in code.items() if "." not in key} | {
        key for key in code if _section_model(_field(key).annotation) is not None
    }
    # Items of `api_keys` and `deny_patterns` are described in their list's row.
    items = {
        key for key in code if key.rsplit(".", 1)[0] in ("auth.api_keys", "screening.deny_patterns")
    }
    routes = {f"routes.{name}" for name in _route_fields()}
    assert set(code) - sections - items - set(reference) == set()
    assert set(reference) - set(code) - routes == set()


def test_reference_defaults_are_the_code_defaults() -> None:
    code = code_keys()
    wrong = {}
    for key, written in reference_keys().items():
        if key not in code or written is None or isinstance(code[key], BaseModel):
            continue
        value = code[key]
        quoted = re.match(r"`([^`]*)`", written)  # `false` (`true` in the embedded default)
        text = quoted[1] if quoted else written
        if isinstance(value, (list, dict)):  # written as YAML: `[HS256]`, `{}`
            same = quoted is None or yaml.safe_load(text) == value  # prose: tested apart
        elif value is None:
            same = text in ("null", "—")
        elif isinstance(value, bool):
            same = text == str(value).lower()
        elif isinstance(value, (int, float)):
            same = re.fullmatch(r"[0-9.]+", text) is not None and float(text) == value
        else:
            same = text == str(value)
        if not same:
            wrong[key] = (written, value)
    assert not wrong, wrong


def test_cors_list_defaults_are_listed_whole_in_the_reference() -> None:
    defaults = code_keys()
    for key in ("cors.allow_headers", "cors.expose_headers"):
        row = next(line for line in REFERENCE.splitlines() if line.startswith(f"| `{key[5:]}`"))
        for header in defaults[key]:
            if header.startswith("anthropic-ratelimit-"):
                header = "anthropic-ratelimit-*"
            elif header in ("x-request-id", "request-id") and key.endswith("expose_headers"):
                header = "request ids"
            assert header in row, f"{key}: {header}"
    # security.md spells the default allow_headers out too, for preflights.
    security = (ROOT / "docs" / "security.md").read_text()
    listed = security.split("from `allow_headers`: by default", 1)[1].split("), `-Max-Age`", 1)[0]
    assert set(re.findall(r"`([^`]+)`", listed)) == set(defaults["cors.allow_headers"])


def test_the_example_config_shows_every_key() -> None:
    example = yaml.safe_load(EXAMPLE.read_text())
    written: set[str] = set()

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item, prefix)
        elif isinstance(node, dict):
            for name, value in node.items():
                written.add(prefix + name)
                if prefix + name not in FREE_FORM and prefix + name != "routes":
                    walk(value, prefix + name + ".")

    walk(example, "")
    assert set(code_keys()) - written == set()
    defaults = code_keys()
    for key in ("cors.allow_methods", "cors.allow_headers", "cors.expose_headers"):
        assert example["cors"][key[5:]] == defaults[key], key


def _field(key: str) -> Any:
    model: type[BaseModel] = Config
    *parents, name = key.split(".")
    for parent in parents:
        sub = _section_model(model.model_fields[parent].annotation)
        assert sub is not None
        model = sub
    return model.model_fields[name]


def _route_fields() -> list[str]:
    route = _section_model(Config.model_fields["routes"].annotation)
    assert route is not None
    return list(route.model_fields)


# `section.key` spellings in the docs that are not config keys: the OpenTelemetry
# attributes `server.address` / `server.port`, and the Helm chart's own values.
NOT_CONFIG_KEYS = {"server.address", "server.port"}


def test_every_key_the_docs_name_exists() -> None:
    """A key named in prose anywhere (`claude.idle_timeout_seconds`) is a real key."""
    keys = set(code_keys())
    for route_key in _route_fields():
        keys.add(f"routes.{route_key}")
    sections = "|".join(Config.model_fields)
    unknown = {}
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if doc.name in ("BENCHMARKS.md", "kubernetes.md"):  # Helm values there share names
            continue
        for key in re.findall(rf"`((?:{sections})\.[a-z_][a-z0-9_.]*)`", doc.read_text()):
            if key not in keys and key not in NOT_CONFIG_KEYS:
                unknown[key] = doc.name
    assert not unknown, unknown


def test_the_routes_table_names_every_key_a_route_may_not_override() -> None:
    """The route overrides' rows say which keys are top level only: exactly the refused ones."""
    rows = {
        re.findall(r"`(\w+)`", line.split(" | ")[0])[-1]: line
        for line in REFERENCE.split("## routes", 1)[1].split("\n## ", 1)[0].splitlines()
        if line.startswith("| `")
    }
    quotas = rows["quotas"].split("`quotas.store`", 1)[1].split(" are top-level only", 1)[0]
    assert {"store", *re.findall(r"`(\w+)`", quotas)} == refused_per_route("quotas")
    cache = rows["cache"].split("(", 1)[1].split(")", 1)[0]  # the keys a route may set
    assert set(re.findall(r"`(\w+)`", cache)) == set(CacheConfig.model_fields) - (
        refused_per_route("cache")
    )
