"""Load a config file: YAML → `${VAR}` interpolation → validation, every problem at once.

Problems are collected as `path.to.field: message` lines and raised together in one
`ConfigError`, so `sidecar check` can print them all and exit once.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import BaseModel, SecretStr, ValidationError

from sidecar.config import (
    AuthConfig,
    CacheConfig,
    Config,
    CorsConfig,
    QuotaConfig,
    RouteConfig,
    ScreeningConfig,
    redact_url,
)
from sidecar.config.routes import TOP_LEVEL_ONLY
from sidecar.paths import PathRefused, canonical
from sidecar.policy.claude_schema import Collected
from sidecar.quotas.estimate import estimate_input_tokens

# `$$`, a reference, or a `${` written as one but not one (told, never kept as text: a
# mistyped `${JWT_SECRET:?…}` kept literally would be a secret anyone reading the file
# knows): a name of sorts (letters, digits, `_`, `-`, spaces) closed by `}`, by a shell
# operator (`:?`, `:=`, `:+`, `-`, a nested `:-${`) or by the value's end. Any other `${`
# is text, as it always was (an RE2 deny pattern `\${jndi:`, a template's `${{`).
# A default follows the same rules as the text around it: `$$` is `$`, no `${` inside.
_VAR = re.compile(
    r"\$\$"
    r"|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>(?:[^}$]|\$\$|\$(?!\{))*))?\}"
    r"|(?P<bad>\$\{)(?=[\w\s-]*(?:\}|:?[-?=+]|\Z))"
)
_NOT_A_REFERENCE = (
    "'${' at character %d starts no ${VAR} or ${VAR:-default} reference "
    "(a name is letters, digits and _, a default holds no '${'; write $${ for a literal '${')"
)
_SECTIONS: dict[str, type[BaseModel]] = {
    "auth": AuthConfig,
    "cors": CorsConfig,
    "screening": ScreeningConfig,
    "quotas": QuotaConfig,
    "cache": CacheConfig,
}


class ConfigError(Exception):
    """A config that must not be served; `problems` holds `path: message` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """The effective policy of one route: top-level sections with its overrides merged."""

    auth: AuthConfig
    cors: CorsConfig
    screening: ScreeningConfig
    quotas: QuotaConfig
    quota_scope: str  # counters are shared by routes with the same scope
    cache: CacheConfig


# --------------------------------------------------------------------------- YAML


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys instead of keeping the last one, and tells a
    value its tag cannot read (`!!int 0x`, an integer of 5000 digits) by its place."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception:  # the tag's constructor failed: PyYAML lets ValueError etc. out
            kind = node.tag.rsplit(":", 1)[-1]
            raise yaml.constructor.ConstructorError(
                None, None, f"not a value a YAML {kind} can hold", node.start_mark
            ) from None


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            hash(key)
        except TypeError:  # a list or mapping as a key: no config key is one
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"a mapping key must be a plain value, not a {type(key).__name__}", mark
            ) from None
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
        seen.add(key)
    return dict(loader.construct_pairs(node, deep=True))


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


# Values YAML aliases (`*name`) may expand a config to. A file without aliases is bounded
# by its own size (and is never refused here); nested aliases grow exponentially ("billion
# laughs": nine lines that expand to 10^9 values), which would hang `check` and a running
# sidecar's reload while it filled the memory.
MAX_EXPANDED_VALUES: Final = 100_000


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text; syntax errors become ConfigError with line and column. Aliases
    that expand the config past `MAX_EXPANDED_VALUES` values, and nesting deeper than the
    parser goes, are refused too."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError([f"{source}: {where}: {exc.problem or exc}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: {exc}"]) from None
    except RecursionError:  # the parser recurses per level: a few hundred `[` end it
        raise ConfigError(
            [f"{source}: lists and mappings nested too deeply (no config nests a hundred levels)"]
        ) from None
    written = [0]
    if _expanded_size(data, {}, written) > max(MAX_EXPANDED_VALUES, written[0]):
        raise ConfigError(
            [f"{source}: its aliases (*name) expand it to more than {MAX_EXPANDED_VALUES} "
             "values; write the repeated parts out, or fewer of them"]
        )  # fmt: skip
    return data


def _expanded_size(data: Any, sizes: dict[int, int], written: list[int]) -> int:
    """How many values `data` holds with every alias expanded. `sizes` remembers each list
    and mapping by identity (an alias is the same object), so the count costs one visit per
    node as written however large the expansion; `written[0]` counts those visits."""
    if not isinstance(data, (dict, list)):
        written[0] += 1
        return 1
    known = sizes.get(id(data))
    if known is None:
        written[0] += 1
        children = data.values() if isinstance(data, dict) else data
        known = 1 + sum(_expanded_size(child, sizes, written) for child in children)
        sizes[id(data)] = known
    return known


# --------------------------------------------------------------------------- ${VAR}


def interpolate(
    data: Any,
    env: Mapping[str, str],
    problems: list[str],
    path: str = "",
    used: dict[str, str] | None = None,
) -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in every string; `$$` is a literal `$`.
    `used` gets each variable whose value was put in, by name."""
    if isinstance(data, dict):
        return {k: interpolate(v, env, problems, _join(path, k), used) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate(v, env, problems, _join(path, i), used) for i, v in enumerate(data)]
    if not isinstance(data, str) or "$" not in data:
        return data

    for match in _VAR.finditer(data):
        if match["bad"] is not None:  # the whole value is refused, its references unread
            problems.append(f"{path or '<root>'}: {_NOT_A_REFERENCE % (match.start() + 1)}")
            return data

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match["name"], match["default"]
        if default is not None and "$$" in default:
            default = default.replace("$$", "$")
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                problems.append(f"{path or '<root>'}: environment variable {name} is not set")
                return ""
            return default
        if used is not None:
            used[name] = value
        return value

    return _VAR.sub(substitute, data)


# A value from the environment at least this long is never quoted in a problem; shorter
# ones (`0`, `true`, `info`) are no secret and would mask words of the messages.
MIN_HIDDEN: Final = 6


def hide_environment(problems: list[str], used: Mapping[str, str]) -> list[str]:
    """`problems` with every value the environment put in the config shown as the
    reference it came from (`${ANTHROPIC_API_KEY}`). A validator quotes the value it
    refuses (`must be host:port, got '...'`), and a variable written under the wrong key
    (an API key as `base_url`, two variables swapped) would print the secret to the
    terminal, the log of a refused reload and whatever collects them."""
    hidden = sorted(
        ((name, value) for name, value in used.items() if len(value) >= MIN_HIDDEN),
        key=lambda pair: -len(pair[1]),  # the longest first: one value may hold another
    )
    if not hidden:
        return problems
    shown = []
    for problem in problems:
        for name, value in hidden:
            for spelling in {value, repr(value)[1:-1], json.dumps(value)[1:-1]}:
                problem = problem.replace(spelling, f"${{{name}}}")
        shown.append(problem)
    return shown


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


# --------------------------------------------------------------------------- validation


_PAST: Final = object()  # `_input_path` went past the file's data (a missing key)
_TYPE_TAGS: Final = frozenset({"int", "float", "str", "bool", "bytes", "none", "list", "dict"})


def _input_path(data: object, loc: tuple[int | str, ...]) -> str:
    """`loc` as the config's own keys: pydantic's union branch tags (`lax-or-strict[...]`,
    `function-plain[...]`, a model's class name) are not keys of the file, so they are left
    out; a key the file lacks (a required one) stays."""
    parts: list[str] = []
    node = data
    for part in loc:
        listed = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if listed or (isinstance(node, Mapping) and part in node):
            node = node[part]  # type: ignore[index]
        elif node is _PAST or not isinstance(node, Mapping | list):
            continue  # a field of a union branch the file's plain value was tried as
        elif isinstance(part, str) and ("[" in part or part in _TYPE_TAGS or part[:1].isupper()):
            continue  # a union branch: the next part, if any, is still within `node`
        else:
            node = _PAST  # a key the file lacks: named, and nothing below it is the file's
        parts.append(str(part))
    return ".".join(parts)


def _format_errors(exc: ValidationError, data: object, prefix: str = "") -> Iterator[str]:
    """One line per place in the file; a union's branches that all failed share one line."""
    found: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False):
        loc = _input_path(data, error["loc"])
        where = _join(prefix, loc) if loc else (prefix or "<root>")
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required"
        message = message.removeprefix("Value error, ")
        messages = found.setdefault(where, [])
        if message not in messages:
            messages.append(message)
    for where, messages in found.items():
        yield f"{where}: {', or '.join(messages)}"


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `override` merged in, mappings key by key (override wins); neither changes."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _section_data(model: BaseModel) -> dict[str, Any]:
    """A section as plain data that re-validates to the same model (secrets kept)."""
    data: dict[str, Any] = _reveal(model.model_dump(mode="python"))
    return data


def _reveal(data: Any) -> Any:
    if isinstance(data, SecretStr):
        return data.get_secret_value()
    if isinstance(data, dict):
        return {k: _reveal(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_reveal(v) for v in data]
    return data


def _brings_credentials(config: Config, override: Mapping[str, Any]) -> bool:
    """A route `auth` override adding jwt/api_keys where no mode was ever written."""
    return (
        "auth" not in config.model_fields_set
        and "mode" not in override
        and bool(override.get("jwt") or override.get("api_keys"))
    )


def _route_policy(
    config: Config, index: int, route: RouteConfig, problems: list[str]
) -> RoutePolicy:
    sections: dict[str, Any] = {}
    overridden = False
    for name, model in _SECTIONS.items():
        base: BaseModel = getattr(config, name)
        given: BaseModel | None = getattr(route, name)
        if given is None:
            sections[name] = base
            continue
        override: dict[str, Any] = _reveal(given.model_dump(mode="python", exclude_unset=True))
        overridden = overridden or name == "quotas"
        for key in TOP_LEVEL_ONLY.get(name, ()):
            if key in override:
                problems.append(f"routes.{index}.{name}.{key}: can only be set at the top level")
        merged = deep_merge(_section_data(base), override)
        if name == "auth" and _brings_credentials(config, override):
            # No top-level `auth` means `mode: none`; a route that adds credentials without
            # naming a mode means them (as a top-level section would): fail closed.
            merged["mode"] = "required"
        try:
            sections[name] = model.model_validate(merged)
        except ValidationError as exc:
            problems.extend(_format_errors(exc, merged, f"routes.{index}.{name}"))
            sections[name] = base
    return RoutePolicy(
        auth=sections["auth"],
        cors=sections["cors"],
        screening=sections["screening"],
        quotas=sections["quotas"],
        quota_scope=route.path if overridden else "global",
        cache=sections["cache"],
    )


def route_policies(config: Config) -> list[RoutePolicy]:
    """Effective policy per route, in route order; raises ConfigError on a bad override.

    Built once per config (at validation) and kept with it, so the route table, auth and
    quotas all see the very same policy objects.
    """
    built: list[RoutePolicy] | None = config._route_policies
    if built is not None:
        return built
    problems: list[str] = []
    policies = [_route_policy(config, i, r, problems) for i, r in enumerate(config.routes)]
    problems.extend(_cache_store_problems(config, policies))
    problems.extend(_ui_tool_problems(config, policies))
    problems.extend(_default_call_problems(config, policies))
    problems.extend(_jwks_schedule_problems(config, policies))
    problems.extend(_api_key_problems(config, policies))
    for index, route in enumerate(config.routes):
        if route.resume is not None and route.resume.enabled and not config.resume.enabled:
            # Off at the top level is off everywhere (no store is opened for it): a route
            # asking for it would be a key that is accepted and does nothing.
            problems.append(
                f"routes.{index}.resume.enabled: resume is off for every route "
                "(resume.enabled: false); turn it on at the top level, and off on the "
                "routes that should not resume"
            )
        try:
            written = canonical(route.path).path
        except PathRefused as refused:
            problems.append(f"routes.{index}.path: {refused.message}")
            continue
        if written != route.path:
            problems.append(
                f"routes.{index}.path: not in canonical form (requests are matched as {written!r})"
            )
    if problems:
        raise ConfigError(problems)
    config._route_policies = policies
    return policies


def _cache_store_problems(config: Config, policies: list[RoutePolicy]) -> list[str]:
    """A cache switched on (at the top or on a route) needs a store it can reach."""
    if config.cache.store != "redis" or config.cache_redis_url is not None:
        return []
    missing = "store 'redis' needs cache.redis_url or quotas.redis_url"
    problems = [f"cache.store: {missing}"] if config.cache.enabled else []
    for index, policy in enumerate(policies):
        if policy.cache.enabled and not config.cache.enabled:
            problems.append(f"routes.{index}.cache.enabled: the cache {missing}")
    return problems


def _jwks_schedule_problems(config: Config, policies: list[RoutePolicy]) -> list[str]:
    """Routes naming one `jwks_url` share one key set, fetched on one schedule: another
    `jwks_refresh_seconds` or `jwks_min_refresh_seconds` on one of them could not hold
    (one route's would win unseen), so it is refused, naming both routes."""
    first: dict[str, tuple[int, tuple[float, float]]] = {}
    problems: list[str] = []
    for index, policy in enumerate(policies):
        jwt = policy.auth.jwt
        if jwt is None or jwt.jwks_url is None:
            continue
        schedule = (jwt.jwks_refresh_seconds, jwt.jwks_min_refresh_seconds)
        seen = first.setdefault(jwt.jwks_url, (index, schedule))
        if seen[1] != schedule:
            other = seen[0]
            problems.append(
                f"routes.{index}.auth.jwt: its jwks_url is also routes.{other}'s "
                f"({config.routes[other].path}), with another jwks_refresh_seconds or "
                "jwks_min_refresh_seconds; one key set is fetched on one schedule: set the "
                "same on every route that names this URL"
            )
    return problems


def _api_key_problems(config: Config, policies: list[RoutePolicy]) -> list[str]:
    """An API key's name is who the caller is, on every route: the cache's scope, a resume
    owner, a quota subject, the identity headers the app reads. A route's own `api_keys`
    may list the top level's keys or keys of its own, but a name given to another key (or
    another user or tenant), or a key under another name, would make two callers one (or
    one caller two): refused, naming where it was first given. One key under two names in
    one list is refused here too: only one of them would ever be used, and removing the
    other's entry to revoke the key would leave it working."""
    top = config.auth.api_keys
    entries = [("auth.api_keys", key) for key in top]
    for index, policy in enumerate(policies):
        if policy.auth.api_keys != top:  # an inherited list is the top level's, checked once
            entries.extend((f"routes.{index}.auth.api_keys", key) for key in policy.auth.api_keys)
    by_name: dict[str, tuple[str, tuple[str, str | None, str | None]]] = {}
    by_digest: dict[str, tuple[str, str]] = {}
    problems: list[str] = []
    for where, key in entries:
        seen = by_name.setdefault(key.name, (where, (key.sha256, key.user, key.tenant)))
        if seen[1] != (key.sha256, key.user, key.tenant):
            problems.append(
                f"{where}: {key.name!r} is another key (or user or tenant) than the "
                f"{key.name!r} of {seen[0]}; one name is one caller everywhere: rename one"
            )
        named = by_digest.setdefault(key.sha256, (where, key.name))
        if named[1] != key.name:
            problems.append(
                f"{where}: {key.name!r} has the sha256 of {named[1]!r} in {named[0]}; one key "
                "is one caller everywhere: use one name"
            )
    return sorted(set(problems), key=problems.index)


def _ui_tool_problems(config: Config, policies: list[RoutePolicy]) -> list[str]:
    """`ui.tools` are the operator's, not screened per call: one that makes Claude fetch
    content (web search or fetch) contradicts a `ui` route that refuses remote content."""
    remote = config.ui.tools_texts.remote
    if remote is None:
        return []
    return [
        f"routes.{index}.screening.remote_content: 'refuse' on a ui route, but ui.tools "
        f"offers {remote}; remove that tool or allow remote content on this route"
        for index, (route, policy) in enumerate(zip(config.routes, policies, strict=True))
        if route.handler == "ui" and policy.screening.remote_content == "refuse"
    ]


def _default_call_problems(config: Config, policies: list[RoutePolicy]) -> list[str]:
    """A token limit below what a call left at the default `max_tokens` reserves would
    refuse every such call (400, `quota_request_too_large`): on a ui route (whose clients
    cannot choose max_tokens) no call could ever pass. Refused, naming both keys. The
    anthropic route has no default (each request names its max_tokens)."""
    problems: list[str] = []
    for index, (route, policy) in enumerate(zip(config.routes, policies, strict=True)):
        if route.handler not in ("prompt", "ui"):
            continue
        quotas = policy.quotas
        limits = [
            (key, limit)
            for key in ("tokens_per_minute", "tokens_per_day")
            if (limit := getattr(quotas, key)) is not None
        ]
        if not limits:
            continue
        if route.handler == "ui" and config.ui.max_tokens is not None:
            max_tokens_key, max_tokens = "ui.max_tokens", config.ui.max_tokens
        else:
            max_tokens_key, max_tokens = "claude.max_tokens", config.claude.max_tokens
        least = max_tokens + _least_input_estimate(config, route.handler, quotas)
        overridden = route.quotas.model_fields_set if route.quotas is not None else set()
        for key, limit in limits:
            if least <= limit:
                continue
            where = f"routes.{index}.quotas" if key in overridden else "quotas"
            problems.append(
                f"{where}.{key}: {limit} is less than a call left at the default "
                f"{max_tokens_key} ({max_tokens}) reserves on routes.{index} ({route.path}): "
                f"at least {least} tokens (max_tokens + its input estimate); every such "
                f"call would be refused: lower {max_tokens_key} or raise {where}.{key}"
            )
    return problems


def _least_input_estimate(config: Config, handler: str, quotas: QuotaConfig) -> int:
    """The input estimate of the smallest call a route makes: a one-character prompt on the
    prompt route; on the ui route what the sidecar adds itself (its system prompt, tools)."""
    if handler != "ui":
        return estimate_input_tokens(Collected(texts=["?"]), quotas)
    ui = config.ui
    system = Collected(texts=[ui.system] if ui.system else [])
    return estimate_input_tokens(system, quotas, ui.tools_chars, bool(ui.tools))


def validate(data: Any, env: Mapping[str, str] | None = None) -> Config:
    """Interpolate and validate raw config data; raise ConfigError listing every problem."""
    problems: list[str] = []
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(["<root>: the config must be a mapping of sections"])
    used: dict[str, str] = {}
    data = interpolate(data, os.environ if env is None else env, problems, used=used)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        # A field whose variable is unset was read as "": its type error is that, told already,
        # and so is a section's check that read it (`auth.jwt: secret must be at least 32
        # bytes`): the section's checks wait for the variable, as for a field's own problem.
        told = {problem.partition(": ")[0] for problem in problems}
        found = [p for p in _format_errors(exc, data) if not _reads(p.partition(": ")[0], told)]
        raise ConfigError(hide_environment(problems + found, used)) from None
    if problems:
        raise ConfigError(problems)
    try:
        route_policies(config)
    except ConfigError as exc:
        raise ConfigError(hide_environment(exc.problems, used)) from None
    return config


def _reads(where: str, told: set[str]) -> bool:
    """Whether a problem at `where` is at, or is a check of a section holding, a `told` field."""
    return any(path == where or path.startswith(f"{where}.") for path in told)


def default_config_text() -> str:
    """The embedded default config (`config/minimal.yaml`)."""
    packaged = resources.files("sidecar").joinpath("minimal.yaml")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parent.parent / "config" / "minimal.yaml").read_text("utf-8")


def load(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Load `path` (or SIDECAR_CONFIG, or the embedded default) into a validated Config."""
    environ = os.environ if env is None else env
    chosen = path or environ.get("SIDECAR_CONFIG") or None
    if chosen is None:
        return validate(parse_yaml(default_config_text(), "<embedded default>"), environ)
    try:
        text = Path(chosen).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{chosen}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{chosen}: not UTF-8 text"]) from None
    data = parse_yaml(text, str(chosen))
    if data is None:
        # Empty, comments only or `~`: a truncated write or a ConfigMap that lost its key far
        # more often than a wish for every default (no auth, the built-in fake). It never
        # starts, and a reload to it keeps the running config; `{}` asks for the defaults.
        raise ConfigError(
            [f"{chosen}: the file has no config (empty); write {{}} for the defaults"]
        )
    return validate(data, environ)


def redacted(config: Config) -> dict[str, Any]:
    """The effective config as plain data with every secret shown as `***`."""
    data: dict[str, Any] = _redact(config.model_dump(mode="python"))
    # A route's overrides as written: the keys it sets, not every key of the section as null.
    data["routes"] = [
        _redact(route.model_dump(mode="python", exclude_unset=True)) for route in config.routes
    ]
    return data


def _redact(data: Any) -> Any:
    if isinstance(data, SecretStr):
        return "***"
    if isinstance(data, str) and "://" in data:  # a URL: its userinfo and query values
        return redact_url(data)
    if isinstance(data, dict):
        return {k: _redact(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_redact(v) for v in data]
    if isinstance(data, Path):
        return str(data)
    if data is not None and not isinstance(data, str | int | float | bool):
        return str(data)
    return data
