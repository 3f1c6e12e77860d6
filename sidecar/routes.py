"""The route table: path prefixes in config order, each with its effective policy.

Requests are routed by their canonical path (`sidecar.paths`), and a path whose
written form (dot segments still in place) falls under another route than its
canonical form is refused: `/public/../admin` was written under `/public` and must
not borrow that route's policy, nor reach `/admin` through it.

Servers behind the sidecar read one path in more than one way: Java servers (Tomcat,
Jetty) drop a segment's `;parameters` (`/admin;x/y` is their `/admin/y`, and `/;x/admin`
their `/admin`), and many routers ignore letter case (Express, ASP.NET, IIS: `/ADMIN` is
their `/admin`). A path that falls under another route when read either way (or both) is
refused (`path_ambiguous`): otherwise `/admin;x/y` or `/ADMIN/y` would be let in by the
`/` route's policy and served by the app as `/admin/y`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from sidecar.config import Config, Handler
from sidecar.config.routes import under_prefix as _under
from sidecar.errors import Family
from sidecar.loader import RoutePolicy, route_policies
from sidecar.paths import PathRefused, canonical
from sidecar.policy import CorsPolicy, Screener

REMEMBERED: Final = 1024  # raw paths whose routing is remembered (cleared when full)
REMEMBERED_LENGTH: Final = 512  # longer paths are routed afresh each time


def _without_parameters(path: str) -> str:
    """`path` as a Java server reads it: each segment's `;parameters` dropped, then the
    segments left empty (`/;x/admin` is `/admin`)."""
    if ";" not in path:
        return path
    kept = [s.partition(";")[0] for s in path[1:].split("/")]
    names = [name for name in kept if name]
    trailing = "/" if path.endswith("/") and names else ""
    return "/" + "/".join(names) + trailing


# A run of escaped bytes past ASCII: the UTF-8 of a letter a server may fold.
_ESCAPED_UTF8: Final = re.compile(r"(?:%[89a-f][0-9a-f])+")


def _fold_char(char: str) -> str:
    """One character as a case-insensitive server compares it: its simple upper case, then
    that one's lower case, so `ı`, `ſ` and the Kelvin sign are `i`, `s` and `k` (as Java's
    `equalsIgnoreCase` and `Character.toLowerCase` read them), `İ` is `i`, `É` is `é`."""
    upper = char.upper()
    lower = (upper if len(upper) == 1 else char).lower()
    return lower[0]


def _decode_folded(run: re.Match[str]) -> str:
    # A canonical path's escapes are well-formed UTF-8 (`sidecar.paths` refuses others);
    # `surrogateescape` only keeps this total.
    text = bytes.fromhex(run.group(0).replace("%", "")).decode("utf-8", "surrogateescape")
    return "".join(_fold_char(char) for char in text)


def _folded(path: str) -> str:
    """`path` with letter case ignored, as a server that decodes it first does: ASCII
    letters, and the letters past ASCII its escapes spell (`%C3%89` is `É`, read as `é`;
    `%C4%B1` is `ı`, read as `i`). A canonical path is ASCII: its other bytes are escaped."""
    if "%" not in path:
        return path.lower()
    return _ESCAPED_UTF8.sub(_decode_folded, path.lower())


def _without_parameters_folded(path: str) -> str:
    return _folded(_without_parameters(path))


# The other readings of a path (and of a route's prefix): case folded, parameters
# dropped, both.
_READINGS: Final[tuple[Callable[[str], str], ...]] = (
    _folded,
    _without_parameters,
    _without_parameters_folded,
)


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
        return _under(self.path, path)


@dataclass(frozen=True, slots=True)
class Resolved:
    """Where a request goes: its route (None: no route) and canonical path, or why not."""

    route: Route | None
    path: str  # canonical; when refused, the raw path as shown (`shown`): ASCII only
    refused: PathRefused | None = None


_NOT_SHOWN: Final = re.compile(r"[^\x21-\x7e]")


def shown(raw_path: str) -> str:
    """A refused raw path as logs and spans carry it: every byte that is no visible ASCII
    (raw bytes past ASCII, which aiohttp's pure-Python parser hands on as `surrogateescape`
    characters, controls, spaces) as its `%XX` escape, so no line or attribute holds raw
    bytes or a lone surrogate an exporter cannot encode. A path of visible ASCII (the C
    parser's, always) is itself."""
    if _NOT_SHOWN.search(raw_path) is None:
        return raw_path
    try:
        raw = raw_path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no byte was read as: its own UTF-8 spelling
        raw = raw_path.encode("utf-8", "surrogatepass")
    return "".join(f"%{byte:02X}" if not 0x21 <= byte <= 0x7E else chr(byte) for byte in raw)


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
        # Per reading: each route with its prefix read that way.
        self._read_prefixes = [
            [(read(route.path), route) for route in self.routes] for read in _READINGS
        ]

    @property
    def remembered(self) -> int:
        """How many raw paths' routing is remembered (at most `REMEMBERED`)."""
        return len(self._resolved)

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
            if len(raw_path) <= REMEMBERED_LENGTH:
                if len(self._resolved) >= REMEMBERED:
                    self._resolved.clear()
                self._resolved[raw_path] = resolved
        return resolved

    def _resolve(self, raw_path: str) -> Resolved:
        try:
            found = canonical(raw_path)
        except PathRefused as refused:
            return Resolved(self.match(raw_path), shown(raw_path), refused)
        route = self.match(found.path)
        if found.written != found.path:
            written_route = self.match(found.written)
            if written_route is not route:
                return Resolved(
                    written_route or route,
                    shown(raw_path),
                    PathRefused("path_climbs", "the request path climbs out of its route"),
                )
        if route is not None:
            for read, prefixes in zip(_READINGS, self._read_prefixes, strict=True):
                path = read(found.path)
                if path == found.path:
                    continue
                other = next((r for prefix, r in prefixes if _under(prefix, path)), None)
                if other is not route:
                    return Resolved(
                        route,
                        shown(raw_path),
                        PathRefused(
                            "path_ambiguous",
                            "the request path names another route when read as some servers "
                            "read it (';' parameters dropped, letter case ignored)",
                        ),
                    )
        return Resolved(route, found.path)
