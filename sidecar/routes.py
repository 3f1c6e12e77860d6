"""The route table: path prefixes in config order, each with its effective policy.

Requests are routed by their canonical path (`sidecar.paths`), and a path whose
written form (dot segments still in place) falls under another route than its
canonical form is refused: `/public/../admin` was written under `/public` and must
not borrow that route's policy, nor reach `/admin` through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sidecar.config import Config, Handler
from sidecar.errors import Family
from sidecar.loader import RoutePolicy, route_policies
from sidecar.paths import PathRefused, canonical
from sidecar.policy import CorsPolicy, Screener

_REMEMBERED: Final = 1024  # raw paths whose routing is remembered (cleared when full)
_REMEMBERED_LENGTH: Final = 512  # longer paths are routed afresh each time


@dataclass(frozen=True, slots=True)
class Route:
    """One configured route with its policy objects built once at load."""

    index: int
    path: str
    handler: Handler
    policy: RoutePolicy
    cors: CorsPolicy
    screener: Screener
    family: Family  # the error format and status conventions of its answers

    def matches(self, path: str) -> bool:
        """Prefix match on whole segments: `/api` matches `/api` and `/api/x`, not `/apix`."""
        prefix = self.path
        if prefix.endswith("/"):
            return path.startswith(prefix) or path == prefix[:-1]
        return path == prefix or path.startswith(prefix + "/")


@dataclass(frozen=True, slots=True)
class Resolved:
    """Where a request goes: its route (None: no route) and canonical path, or why not."""

    route: Route | None
    path: str  # canonical; the raw path when refused
    refused: PathRefused | None = None


def family_of(handler: Handler) -> Family:
    """The route family of a handler kind: Claude's API, the prompt routes, or the app."""
    if handler == "anthropic":
        return "anthropic"
    return "prompt" if handler in ("prompt", "ui") else "app"


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
                family=family_of(route.handler),
            )
            for i, (route, policy) in enumerate(
                zip(config.routes, route_policies(config), strict=True)
            )
        ]
        self._resolved: dict[str, Resolved] = {}  # by raw path (`resolve`)

    def match(self, path: str) -> Route | None:
        """The route of a canonical path."""
        for route in self.routes:
            if route.matches(path):
                return route
        return None

    def resolve(self, raw_path: str) -> Resolved:
        """Route a raw request path (as sent, no query) by its canonical form.

        A refused path still names the route its raw spelling falls under (if any), so
        the refusal is answered in that route's error format and counted under it.
        Answers are remembered per raw path (bounded: paths are the client's choice); a
        `Resolved` is immutable and the table never changes (a reload builds a new one).
        """
        resolved = self._resolved.get(raw_path)
        if resolved is None:
            resolved = self._resolve(raw_path)
            if len(raw_path) <= _REMEMBERED_LENGTH:
                if len(self._resolved) >= _REMEMBERED:
                    self._resolved.clear()
                self._resolved[raw_path] = resolved
        return resolved

    def _resolve(self, raw_path: str) -> Resolved:
        try:
            found = canonical(raw_path)
        except PathRefused as refused:
            return Resolved(self.match(raw_path), raw_path, refused)
        route = self.match(found.path)
        if found.written != found.path:
            written_route = self.match(found.written)
            if written_route is not route:
                return Resolved(
                    written_route or route,
                    raw_path,
                    PathRefused("path_climbs", "the request path climbs out of its route"),
                )
        return Resolved(route, found.path)
