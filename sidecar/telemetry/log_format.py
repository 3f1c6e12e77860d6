"""The two log formats: JSON lines (encoded by orjson) and text, carrying the trace and span ids.

Fields come from `extra={...}`; `trace_id`/`span_id` are taken from the record when
given, else from the current OpenTelemetry context. Nothing here reads prompts or
secrets: callers decide what goes into `extra`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from typing import Any, Final

import orjson
from opentelemetry import trace

# Attributes every LogRecord has; anything else came from `extra`.
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime"}
)
# What orjson refuses (an integer past 64 bits, a string with a lone surrogate, a circular
# value) is encoded by the standard library in the same compact shape, non-ASCII text as
# UTF-8 as orjson writes it; it raises what it raises (a circular value: `ValueError`,
# reported as `logging` reports it).
_FALLBACK: Final = json.JSONEncoder(default=str, separators=(",", ":"), ensure_ascii=False)
_OPTIONS: Final = orjson.OPT_NON_STR_KEYS


def encode_json(value: dict[Any, Any]) -> str:
    """One line's JSON object, compact (`{"a":1,"b":"x"}`): orjson, a value of no JSON
    type as its `str` (as `json.dumps(..., default=str)`, `_default`), keys of any plain type
    written as strings. What orjson refuses goes to `_FALLBACK`; a lone surrogate (only
    ever inside a string) then leaves as its JSON escape, `\\udcff`, as do the line
    breaks JSON leaves raw (`_BREAKS`)."""
    try:
        line = orjson.dumps(value, default=_default, option=_OPTIONS).decode()
    except orjson.JSONEncodeError:
        line = _FALLBACK.encode(_finite(value)).encode("utf-8", "backslashreplace").decode()
    if line.isascii():
        return line
    return line.translate(_BREAKS)


def _default(value: Any) -> Any:
    """A value orjson has no encoding for: a float subclass as its number (as `json`
    writes it), anything else as its `str`."""
    return float(value) if isinstance(value, float) else str(value)


def _finite(value: Any, within: frozenset[int] = frozenset()) -> Any:
    """`value` with NaN and the infinities as None, as orjson writes them (JSON has no word
    for them); a value met again inside itself is left for the encoder to report."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (dict, list, tuple)) and id(value) not in within:
        inner = within | {id(value)}
        if isinstance(value, dict):
            return {k: _finite(v, inner) for k, v in value.items()}
        return [_finite(v, inner) for v in value]
    return value


# Characters some line readers split on (`str.splitlines`, Unicode-aware shippers) that
# JSON leaves raw: escaped, so that a line is one line to every reader.
_BREAKS: Final = {ord(c): f"\\u{ord(c):04x}" for c in "\x85\u2028\u2029"}


def _trace_fields(record: logging.LogRecord) -> dict[str, str]:
    if getattr(record, "trace_id", None):
        return {}
    return _context_ids()


def _context_ids() -> dict[str, str]:
    """`trace_id` / `span_id` of the current OpenTelemetry span (nothing when invalid)."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


# The names `JsonFormatter` puts before a record's fields (`message` is a record's own).
HEAD_NAMES: Final = frozenset({"time", "level", "logger"})

# Which attributes of a record came from `extra`, by the record's attribute names in
# order: a logger call site produces the same names every time, so each is sorted once.
_EXTRA_KEYS: dict[tuple[str, ...], tuple[str, ...]] = {}
EXTRA_KEYS_LIMIT: Final = 256


def extra_keys(attributes: dict[str, Any]) -> tuple[str, ...]:
    names = tuple(attributes)
    keys = _EXTRA_KEYS.get(names)
    if keys is None:
        keys = tuple(k for k in names if k not in _STANDARD and not k.startswith("_"))
        if len(_EXTRA_KEYS) >= EXTRA_KEYS_LIMIT:
            _EXTRA_KEYS.clear()
        _EXTRA_KEYS[names] = keys
    return keys


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record got from `extra={...}`, in the order given."""
    attributes = vars(record)
    return {k: attributes[k] for k in extra_keys(attributes)}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extras, trace ids."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""  # `time` up to the second, for `_second` (lines share seconds)

    def _time(self, created: float, msecs: float) -> str:
        """`time` of a line: formatted up to the second once per second (lines share seconds)."""
        second = int(created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._stamp}.{int(msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        """The line of `record`; `event_line` writes the same for the same fields."""
        entry: dict[str, Any] = {
            "time": self._time(record.created, record.msecs),
            "level": record.levelname,
            "logger": record.name,
            "message": record.msg if not record.args and type(record.msg) is str
            else record.getMessage(),
        }  # fmt: skip
        attributes = vars(record)
        for key in extra_keys(attributes):
            entry[key] = attributes[key]
        if not attributes.get("trace_id"):
            entry.update(_trace_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return encode_json(entry)

    def event_line(
        self, created: float, level: int, name: str, message: str, fields: dict[str, Any]
    ) -> str:
        """What `format` makes of the record `Logger.makeRecord` would build from these.

        `fields` hold only plain names (`plain_fields`: carried as extras, none a name of
        the line's own head); `created` is `time.time()` when logged, `msecs` derived
        from it as `LogRecord.__init__` does.
        """
        if not fields.get("trace_id"):
            ids = _context_ids()
            if ids:  # in `format`'s place: after the fields, or over a `span_id` among them
                fields = {**fields, **ids}
        # The line is `format`'s dict encoded: its head (level, logger, message: the same
        # few per call site, encoded once each) and the fields, encoded as they are,
        # without copying them into a new dict. `time` needs no escaping.
        levelname = logging.getLevelName(level)
        try:
            head = _HEADS[levelname, name, message]
        except KeyError:
            head = _head(levelname, name, message)
        body = encode_json(fields)
        second = int(created)  # `_time`, inline (one call fewer per line)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        time_ = f"{self._stamp}.{int((created - second) * 1000):03d}Z"
        if len(body) == 2:  # no fields: "{}"
            return f'{{"time":"{time_}",{head}}}'
        return f'{{"time":"{time_}",{head},{body[1:]}'


# `"level": ..., "logger": ..., "message": ...` of a line, by their values (bounded).
_HEADS: dict[tuple[str, str, str], str] = {}


def _head(levelname: str, name: str, message: str) -> str:
    """The encoded head of `event_line`'s lines with these values, remembered."""
    head = encode_json({"level": levelname, "logger": name, "message": message})[1:-1]
    if len(_HEADS) >= EXTRA_KEYS_LIMIT:
        _HEADS.clear()
    _HEADS[levelname, name, message] = head
    return head


_BARE: Final = re.compile(r"[!#-<>-~]+")  # printable ASCII but space, `"` and `=`
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")


def text_value(value: object) -> str:
    """A `key=value` field's value that stays one token of one line: a bare word as is,
    anything else (spaces, quotes, `=`, control characters, non-ASCII) as a JSON string,
    so a client's value can neither end the line nor forge a field."""
    text = value if isinstance(value, str) else str(value)
    if _BARE.fullmatch(text):
        return text
    return json.dumps(text)


class TextFormatter(logging.Formatter):
    """Human-readable: `time level logger message key=value ...`, one line per record
    (a traceback aside): values by `text_value`, control characters of the message escaped."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {**extra_fields(record), **_trace_fields(record)}
        tail = " ".join(f"{k}={text_value(v)}" for k, v in fields.items())
        message = _CONTROL.sub(_escaped, record.getMessage())
        line = f"{self.formatTime(record)} {record.levelname} {record.name} {message}"
        if record.exc_info:
            tail += "\n" + self.formatException(record.exc_info)
        return f"{line} {tail}".rstrip()


def _escaped(match: re.Match[str]) -> str:
    return json.dumps(match.group())[1:-1]
