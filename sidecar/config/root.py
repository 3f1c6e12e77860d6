"""`Config`, the whole file: every section, the routes (defaults filled in), checks across them."""

from __future__ import annotations

from typing import Any

from pydantic import Field, PrivateAttr, SecretStr, model_validator

from sidecar.config.auth import AuthConfig
from sidecar.config.browser import BrowserConfig, UiConfig
from sidecar.config.claude import ClaudeConfig
from sidecar.config.fields import Section
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

    @model_validator(mode="after")
    def _routes_consistent(self) -> Config:
        if not self.routes:
            raise ValueError("routes: at least one route is needed")
        if self.app is None and any(route.handler == "app" for route in self.routes):
            raise ValueError("routes: handler 'app' needs the app section (app.url)")
        paths = [route.path for route in self.routes]
        if len(paths) != len(set(paths)):
            raise ValueError("routes: paths must be unique")
        self._every_route_reached()
        return self

    def _every_route_reached(self) -> None:
        """A route no request can reach is a config error, not a route that silently never
        answers: one under `browser.path` (the browser files are served first) or one whose
        paths an earlier route matches first (the first matching route wins)."""
        browser = self.browser.path if self.browser.enabled else None
        for i, route in enumerate(self.routes):
            first = shortest_path(route.path)
            if browser is not None and under_prefix(browser, first):
                raise ValueError(
                    f"routes.{i} ({route.path}) is never reached: it is under browser.path "
                    f"({browser}), whose browser files are served first"
                )
            for j, earlier in enumerate(self.routes[:i]):
                if under_prefix(earlier.path, first):
                    raise ValueError(
                        f"routes.{i} ({route.path}) is never reached: routes.{j} "
                        f"({earlier.path}) matches every path under it first"
                    )

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
