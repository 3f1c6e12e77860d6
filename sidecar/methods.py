"""Request methods as the policy reads them.

Which request methods read a resource: `HEAD` asks for what a `GET` would answer,
without its body (RFC 9110 9.3.2), so every check that reads a GET reads a HEAD too.

Which headers ask an app to take another method than the request line's: many
frameworks honour `X-HTTP-Method-Override`, `X-HTTP-Method` or `X-Method-Override`
(on a POST, some on any method). The policy an app route applies depends on the method
(a query-string credential is read on a GET or HEAD only, CORS grants the methods of
`cors.allow_methods`, a WebSocket handshake is a GET), so such a header would let the
app act on a method the policy never saw: the app proxy refuses it (`method_override`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from sidecar.header_lists import folded_name

READS: Final = frozenset({"GET", "HEAD"})


def reads(method: str) -> bool:
    """True for `GET` and `HEAD`."""
    return method in READS


# In the spelling `_` and `.` are read as `-` (WSGI and CGI servers map `-` and `_` to one
# variable; PHP and lighttpd's CGI/FastCGI map `.` there too).
OVERRIDE_HEADERS: Final = frozenset(
    {"x-http-method-override", "x-http-method", "x-method-override"}
)


def asks_override(names: Iterable[str]) -> bool:
    """Whether any header name, in any case and with `_` or `.` for `-`, is a method
    override."""
    return any(folded_name(name) in OVERRIDE_HEADERS for name in names)
