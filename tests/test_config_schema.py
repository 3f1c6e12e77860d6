"""`sidecar schema`: every key with the default the sidecar uses, lists and mappings too."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from sidecar.config import Config
from tests.support.sidecars import sidecar_command


def _properties(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """The properties of the object `node` describes (through refs and `null` unions)."""
    if "$ref" in node:
        return _properties(schema, schema["$defs"][node["$ref"].rsplit("/", 1)[1]])
    for option in node.get("anyOf", []):
        found = _properties(schema, option)
        if found:
            return found
    return dict(node.get("properties", {}))


def _defaults(
    schema: dict[str, Any], model: type[BaseModel], node: dict[str, Any], prefix: str = ""
) -> dict[str, tuple[Any, Any]]:
    """`section.key` → (the code's default as JSON, the schema's default)."""
    pairs: dict[str, tuple[Any, Any]] = {}
    properties = _properties(schema, node)
    for name, field in model.model_fields.items():
        value = field.get_default(call_default_factory=True)
        if isinstance(value, BaseModel):
            pairs.update(_defaults(schema, type(value), properties[name], f"{prefix}{name}."))
            continue
        written = properties[name].get("default", "<none>")
        code = json.loads(json.dumps(value, default=lambda m: m.model_dump(mode="json")))
        pairs[prefix + name] = (code, written)
    return pairs


def test_the_schema_gives_every_key_its_default() -> None:
    result = sidecar_command("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    pairs = _defaults(schema, Config, schema)
    wrong = {key: pair for key, pair in pairs.items() if pair[0] != pair[1]}
    assert not wrong, wrong
    assert pairs["cors.allow_headers"][1][:2] == ["authorization", "content-type"]
    assert pairs["claude.forward_paths"][1] == ["/v1/models"]
