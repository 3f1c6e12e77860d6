"""The `routes` list: a route's handler and its partial overrides of the policy sections."""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import UnionType
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

from pydantic import create_model, field_validator
from pydantic.json_schema import SkipJsonSchema

from sidecar.config.auth import AuthConfig
from sidecar.config.fields import Section
from sidecar.config.policy import CorsConfig, QuotaConfig, ScreeningConfig
from sidecar.config.streams import CacheConfig

Handler = Literal["prompt", "anthropic", "ui", "app"]


def under_prefix(prefix: str, path: str) -> bool:
    """Prefix match on whole segments: `/api` matches `/api` and `/api/x`, not `/apix`;
    a prefix ending in `/` also matches its path without that slash."""
    if prefix.endswith("/"):
        return path.startswith(prefix) or path == prefix[:-1]
    return path == prefix or path.startswith(prefix + "/")


def shortest_path(prefix: str) -> str:
    """The shortest path a route prefix matches: every path it matches is at or below it,
    so whatever matches this path first matches all of them first."""
    return prefix[:-1] if len(prefix) > 1 and prefix.endswith("/") else prefix


def _override_type(annotation: Any) -> Any:
    """`annotation` with every section model in it replaced by its override model."""
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return override_model(annotation)
    if get_origin(annotation) in (Union, UnionType):
        args = tuple(_override_type(arg) for arg in get_args(annotation))
        return Union[args]  # noqa: UP007 - built from a runtime tuple
    return annotation


def _unless_none(func: Callable[..., Any]) -> Callable[..., Any]:
    """A field validator that lets an override's explicit `null` through (it unsets a key)."""

    @functools.wraps(func)  # pydantic reads the signature (info or not) through `__wrapped__`
    def validate(cls: Any, value: Any, *rest: Any) -> Any:
        return value if value is None else func(cls, value, *rest)

    return validate


# Keys a route may not override: where quota counters and cache entries are kept, and the
# cache's bounds, are one per process (the loader refuses them per route, naming the key).
TOP_LEVEL_ONLY: dict[str, tuple[str, ...]] = {
    "quotas": ("store", "redis_url", "redis_timeout_seconds", "on_store_error"),
    "cache": ("store", "redis_url", "redis_timeout_seconds", "max_entries", "max_bytes"),
}


def override_model(model: type[Section], top_level_only: tuple[str, ...] = ()) -> type[Section]:
    """`model` with every field optional and unset by default: a route's partial override.

    Field types stay (so secrets stay `SecretStr` and are redacted wherever the config is
    shown), field validators stay (they normalise, e.g. plain deny patterns), and checks
    across fields are left to the merged section, which the loader validates with `model`.
    The `top_level_only` keys are still read (so the loader can say they are top level
    only) but left out of the JSON Schema, so an editor neither offers nor accepts them.
    """
    cached = _OVERRIDES.get(model)
    if cached is not None:
        return cached
    fields: dict[str, Any] = {
        name: (_override_type(info.annotation) | None, None)
        for name, info in model.model_fields.items()
    }
    for name in top_level_only:
        fields[name] = (SkipJsonSchema[fields[name][0]], None)  # type: ignore[misc]
    validators: dict[str, Any] = {
        f"_{name}": field_validator(*dec.info.fields, mode=dec.info.mode, check_fields=False)(
            classmethod(_unless_none(getattr(dec.func, "__func__", dec.func)))
        )
        for name, dec in model.__pydantic_decorators__.field_validators.items()
    }
    built: type[Section] = create_model(
        f"{model.__name__.removesuffix('Config')}Override",
        __base__=Section,
        __doc__=f"A route's override of `{model.__name__}`: only the keys it sets are merged.",
        __validators__=validators,
        **fields,
    )
    _OVERRIDES[model] = built
    return built


_OVERRIDES: dict[type[Section], type[Section]] = {}

if TYPE_CHECKING:
    AuthOverride = Section
    CorsOverride = Section
    ScreeningOverride = Section
    QuotaOverride = Section
    CacheOverride = Section
else:
    AuthOverride = override_model(AuthConfig)
    CorsOverride = override_model(CorsConfig)
    ScreeningOverride = override_model(ScreeningConfig)
    QuotaOverride = override_model(QuotaConfig, TOP_LEVEL_ONLY["quotas"])
    CacheOverride = override_model(CacheConfig, TOP_LEVEL_ONLY["cache"])


class ResumeOverride(Section):
    """A route's resume switch: only `enabled` may be set per route."""

    enabled: bool


class RouteConfig(Section):
    path: str
    handler: Handler
    # Partial overrides, deep-merged onto the top-level section of the same name
    # and validated with the same model (see `sidecar.loader.route_policies`).
    auth: AuthOverride | None = None
    cors: CorsOverride | None = None
    screening: ScreeningOverride | None = None
    quotas: QuotaOverride | None = None
    # Only `enabled` may be set per route; on an anthropic route it makes resume the
    # default (else a request opts in with the `Sidecar-Resume: on` header).
    resume: ResumeOverride | None = None
    # The store (`store`, `redis_url`, sizes) is one per process: top level only.
    cache: CacheOverride | None = None

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value
