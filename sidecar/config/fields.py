"""What every config section is built on: the `Section` base and the checked value types
(host:port, header name, HTTP URL, seconds, networks), and URL redaction."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections import Counter
from collections.abc import Iterable
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr
from yarl import URL

# The port in ASCII digits: `\d` would take any script's (`８０`, `٨٠`), which `int` reads too.
_HOST_PORT = re.compile(
    r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[^:\s\[\]]*)):(?P<port>[0-9]{1,5})$"
)


def split_host_port(value: str) -> tuple[str, int]:
    """Split `host:port` (IPv6 as `[::1]:8080`); raise ValueError if malformed."""
    match = _HOST_PORT.match(value)
    if match is None:
        raise ValueError(f"must be host:port, got {value!r}")
    port = int(match["port"])
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0-65535, got {port}")
    return (match["v6"] or match["host"] or "0.0.0.0"), port


def _check_host_port(value: str) -> str:
    split_host_port(value)
    return value


# The scheme and its `//` are optional: a URL written without them (`user:pass@host:4318`,
# a common slip) is refused naming the value, and its password must not be in that message.
_USERINFO = re.compile(r"^(?P<scheme>(?:[A-Za-z][A-Za-z0-9+.-]*:)?/*)(?P<userinfo>[^/?#@]*)@")


def redact_url(value: str) -> str:
    """A URL fit to show: the password of its userinfo (`https://user:***@host/...`), a
    userinfo that is one word (a token: `https://***@host/...`) and every query value
    (`?token=***`) replaced; scheme, host, port, path and query names kept."""
    match = _USERINFO.match(value)
    if match is not None:
        userinfo = match["userinfo"]
        shown = f"{userinfo.partition(':')[0]}:***" if ":" in userinfo else "***"
        value = f"{match['scheme']}{shown}@{value[match.end() :]}"
    head, mark, query = value.partition("?")
    if not mark:
        return value
    query, hash_mark, fragment = query.partition("#")
    pairs = [
        f"{name}=***" if sep else name
        for name, sep, _ in (pair.partition("=") for pair in query.split("&"))
    ]
    return f"{head}?{'&'.join(pairs)}{hash_mark}{'***' if fragment else ''}"


def check_http_url(value: str) -> str:
    """An http(s) URL the HTTP client can use: parsed as it parses it (yarl), with a host
    and a port in range. A value it would refuse would start, then fail every request."""
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"must be an http:// or https:// URL, got {redact_url(value)!r}")
    try:
        host = URL(value).host
    except ValueError:
        host = None
    if not host:
        raise ValueError(
            f"must be an http:// or https:// URL with a host and a port 0-65535, "
            f"got {redact_url(value)!r}"
        )
    return value.rstrip("/")


def _check_header_name(value: str) -> str:
    # A name that is not an RFC 9110 token breaks every response (or request) it is put on.
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", value):
        raise ValueError(f"{value!r} is not an HTTP header name")
    return value


HostPort = Annotated[str, AfterValidator(_check_host_port)]
HeaderName = Annotated[str, AfterValidator(_check_header_name)]
HttpUrl = Annotated[str, AfterValidator(check_http_url)]
# The longest duration the config takes (about 31 years). A float holds far more, but the
# platform's timers do not (a `threading.Timer` and a socket timeout take a C `time_t`,
# Redis an expiry in int64 milliseconds): a longer one would be accepted, then fail at
# shutdown or on every call.
MAX_SECONDS: Final = 1_000_000_000
Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS)]
SecondsOrZero = Annotated[float, Field(ge=0, le=MAX_SECONDS)]  # 0: none, or off
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Section(BaseModel):
    """Base of every config model: strict keys, immutable once loaded."""

    # `.inf` and `.nan` are YAML floats: as a duration, rate or limit they would wait forever,
    # pace nothing or fail in the event loop's timers, so no number field takes them.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def fingerprint(self) -> str:
        """What these settings are, secrets included (as SHA-256 hashes), as one string.

        For de-duplicating and caching per policy: a redacted dump would make two policies
        that differ only in a secret look the same, and one would serve the other's route.
        """
        return json.dumps(_hashed_secrets(self.model_dump(mode="python")), default=str)


def _hashed_secrets(data: Any) -> Any:
    if isinstance(data, SecretStr):
        return "sha256:" + hashlib.sha256(data.get_secret_value().encode()).hexdigest()
    if isinstance(data, dict):
        return {key: _hashed_secrets(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [_hashed_secrets(value) for value in data]
    return data


def repeated_values(values: Iterable[str]) -> str:
    """The values given more than once, quoted, in the order they first appear ("" if
    none): a uniqueness problem names what to fix."""
    counts = Counter(values)  # insertion-ordered: by first appearance
    return ", ".join(repr(value) for value, count in counts.items() if count > 1)
