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

import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import unquote_plus

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


OVERRIDE_PARAM: Final = "_method"
_FIELDS = re.compile("[&;]")  # PHP and older Rack split on `;` too
_PHP_NAME = str.maketrans(" .", "__")  # PHP reads ` ` and `.` in a name as `_`


def query_asks_override(query: str) -> bool:
    """Whether a raw query string names a `_method` parameter, as any framework would read
    the name: percent-decoded (`%5Fmethod`), `+` as a space, leading spaces dropped, ` ` and
    `.` for `_` (PHP), cut at a NUL, with a bracket suffix (`_method[]`), in any case.
    No query costs one test; one without `method` or a `%` in it, one scan."""
    if not query or ("%" not in query and "method" not in query.lower()):
        return False
    for field in _FIELDS.split(query):
        name = unquote_plus(field.partition("=")[0]).lstrip(" ").partition("\0")[0]
        name = name.translate(_PHP_NAME).lower()
        if name == OVERRIDE_PARAM or name.startswith(OVERRIDE_PARAM + "["):
            return True
    return False
