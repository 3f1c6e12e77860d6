"""The route table: path prefixes in config order, each with its effective policy."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.config import Config, Handler
from sidecar.loader import RoutePolicy, route_policies
from sidecar.policy import CorsPolicy, Screener


@dataclass(frozen=True, slots=True)
class Route:
    """One configured route with its policy objects built once at load."""

    index: int
    path: str
    handler: Handler
    policy: RoutePolicy
    cors: CorsPolicy
    screener: Screener

    def matches(self, path: str) -> bool:
        """Prefix match on whole segments: `/api` matches `/api` and `/api/x`, not `/apix`."""
        prefix = self.path
        if prefix.endswith("/"):
            return path.startswith(prefix) or path == prefix[:-1]
        return path == prefix or path.startswith(prefix + "/")


class RouteTable:
    """First matching route wins, in config order."""

    def __init__(self, config: Config) -> None:
        self.routes = [
            Route(
                index=i,
                path=route.path,
                handler=route.handler,
                policy=policy,
                cors=CorsPolicy(policy.cors),
                screener=Screener(policy.screening),
            )
            for i, (route, policy) in enumerate(
                zip(config.routes, route_policies(config), strict=True)
            )
        ]

    def match(self, path: str) -> Route | None:
        for route in self.routes:
            if route.matches(path):
                return route
        return None
