"""`Config`, the whole file: every section, the routes (defaults filled in), checks across them."""

from __future__ import annotations

from typing import Any

from pydantic import Field, PrivateAttr, SecretStr, ValidationInfo, field_validator, model_validator

from sidecar.config.auth import AuthConfig
from sidecar.config.browser import BrowserConfig, UiConfig
from sidecar.config.claude import ClaudeConfig
from sidecar.config.fields import Section, repeated_values
from sidecar.config.policy import CorsConfig, QuotaConfig, ScreeningConfig
from sidecar.config.routes import RouteConfig, shortest_path, under_prefix
from sidecar.config.server import AppConfig, ServerConfig
from sidecar.config.streams import CacheConfig, ResumeConfig
from sidecar.config.telemetry import TelemetryConfig


def _default_routes(has_app: bool) -> list[dict[str, str]]:
    routes = [
        {"path": "/api/stream-response", "handler": "prompt"},
        {"path": "/v1/", "handler": "anthropic"},
        {"path": "/api/chat", "handler": "ui"},
    ]
    if has_app:
        routes.append({"path": "/", "handler": "app"})
    return routes


class Config(Section):
    server: ServerConfig = ServerConfig()
    app: AppConfig | None = None
    claude: ClaudeConfig = ClaudeConfig()
    auth: AuthConfig = AuthConfig(mode="none")
    cors: CorsConfig = CorsConfig()
    screening: ScreeningConfig = ScreeningConfig()
    quotas: QuotaConfig = QuotaConfig()
    resume: ResumeConfig = ResumeConfig()
    cache: CacheConfig = CacheConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    browser: BrowserConfig = BrowserConfig()
    ui: UiConfig = UiConfig()
    routes: list[RouteConfig] = Field(default_factory=list)
    # Each route's effective policy, built once by the loader (`sidecar.loader.route_policies`).
    _route_policies: Any = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _fill_default_routes(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("routes") is None:
            data = {**data, "routes": _default_routes(data.get("app") is not None)}
        return data

    # The checks across sections are field validators, not one check after the whole model:
    # pydantic skips that one when any section fails, and `check` lists every problem. A
    # section a check reads that failed its own validation is missing from `info.data`,
    # and that check is skipped (its section's own problem is reported).
    @field_validator("resume")
    @classmethod
    def _resume_store_reachable(cls, resume: ResumeConfig, info: ValidationInfo) -> ResumeConfig:
        quotas = info.data.get("quotas")
        if (
            resume.enabled and resume.store == "redis" and resume.redis_url is None
            and isinstance(quotas, QuotaConfig) and quotas.redis_url is None
        ):  # fmt: skip
            raise ValueError("store 'redis' needs resume.redis_url or quotas.redis_url")
        return resume

    @field_validator("routes")
    @classmethod
    def _routes_consistent(
        cls, routes: list[RouteConfig], info: ValidationInfo
    ) -> list[RouteConfig]:
        if not routes:
            raise ValueError("at least one route is needed")
        problems = []
        if (
            "app" in info.data and info.data["app"] is None
            and any(route.handler == "app" for route in routes)
        ):  # fmt: skip
            problems.append("handler 'app' needs the app section (app.url)")
        repeated = repeated_values(route.path for route in routes)
        if repeated:
            problems.append(f"paths must be unique: {repeated} given more than once")
        browser = info.data.get("browser")
        if isinstance(browser, BrowserConfig) and not problems:
            problems += _unreached_routes(routes, browser)
        if problems:
            raise ValueError("; ".join(problems))
        return routes

    @property
    def cache_redis_url(self) -> SecretStr | None:
        """Where the Redis cache lives: its own URL, else the quota store's."""
        return self.cache.redis_url or self.quotas.redis_url

    @property
    def cache_used(self) -> bool:
        """The cache is on at the top level or on some route (the store is then opened)."""
        if self.cache.enabled:
            return True
        return any(
            route.cache is not None and getattr(route.cache, "enabled", None)
            for route in self.routes
        )

    @property
    def resume_redis_url(self) -> SecretStr | None:
        """Where the Redis resume store lives: its own URL, else the quota store's."""
        return self.resume.redis_url or self.quotas.redis_url


def _unreached_routes(routes: list[RouteConfig], browser: BrowserConfig) -> list[str]:
    """Routes no request can reach, a config error rather than a route that silently never
    answers: one under `browser.path` (the browser files are served first) or one whose
    paths an earlier route matches first (the first matching route wins)."""
    prefix = browser.path if browser.enabled else None
    problems: list[str] = []
    for i, route in enumerate(routes):
        first = shortest_path(route.path)
        if prefix is not None and under_prefix(prefix, first):
            problems.append(
                f"route {i} ({route.path}) is never reached: it is under browser.path "
                f"({prefix}), whose browser files are served first"
            )
            continue
        for j, earlier in enumerate(routes[:i]):
            if under_prefix(earlier.path, first):
                problems.append(
                    f"route {i} ({route.path}) is never reached: route {j} "
                    f"({earlier.path}) matches every path under it first"
                )
                break
    return problems
