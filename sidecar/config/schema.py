"""The config's JSON Schema as `sidecar schema` prints it, every default included.

pydantic leaves out the default of a field built by a factory (lists, mappings); an
editor then shows `cors.allow_headers` or `claude.forward_paths` without the value the
sidecar uses. Factories here take no arguments, so their value is the default: it is
written like any other. A section's default (a whole model) stays out: its fields
carry their own.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import core_schema

from sidecar.config.root import Config


class WithFactoryDefaults(GenerateJsonSchema):
    """Writes the value of a field's argument-less default factory as its default."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        if "default" in schema or schema.get("default_factory_takes_data", False):
            return super().get_default_value(schema)
        factory = schema.get("default_factory")
        if factory is None:
            return NoDefault
        value = factory()  # type: ignore[call-arg]
        return NoDefault if isinstance(value, BaseModel) else value


def config_schema() -> dict[str, Any]:
    """The JSON Schema of `Config`, for editors."""
    return Config.model_json_schema(schema_generator=WithFactoryDefaults)
