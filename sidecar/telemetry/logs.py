"""Structured logs: JSON lines (default) or text, carrying the trace and span ids.

Fields come from `extra={...}`; `trace_id`/`span_id` are taken from the record when
given, else from the current OpenTelemetry context. Nothing here reads prompts or
secrets: callers decide what goes into `extra`.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import time
from typing import Any, Final, TextIO

from opentelemetry import trace

from sidecar.config import TelemetryConfig

# Attributes every LogRecord has; anything else came from `extra`.
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime"}
)
# One encoder for every line: `json.dumps(..., default=str)` builds a new one per call.
_encode: Final = json.JSONEncoder(default=str).encode


def _trace_fields(record: logging.LogRecord) -> dict[str, str]:
    if getattr(record, "trace_id", None):
        return {}
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


# Which attributes of a record came from `extra`, by the record's attribute names in
# order: a logger call site produces the same names every time, so each is sorted once.
_EXTRA_KEYS: dict[tuple[str, ...], tuple[str, ...]] = {}
_EXTRA_KEYS_LIMIT: Final = 256


def _extra_keys(attributes: dict[str, Any]) -> tuple[str, ...]:
    names = tuple(attributes)
    keys = _EXTRA_KEYS.get(names)
    if keys is None:
        keys = tuple(k for k in names if k not in _STANDARD and not k.startswith("_"))
        if len(_EXTRA_KEYS) >= _EXTRA_KEYS_LIMIT:
            _EXTRA_KEYS.clear()
        _EXTRA_KEYS[names] = keys
    return keys


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record got from `extra={...}`, in the order given."""
    attributes = vars(record)
    return {k: attributes[k] for k in _extra_keys(attributes)}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extras, trace ids."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""  # `time` up to the second, for `_second` (lines share seconds)

    def format(self, record: logging.LogRecord) -> str:
        # Three lines per Claude call: written out here, with no helper calls and no
        # intermediate dicts per line. `time` is formatted up to the second once per second.
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        entry: dict[str, Any] = {
            "time": f"{self._stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.msg if not record.args and type(record.msg) is str
            else record.getMessage(),
        }  # fmt: skip
        attributes = vars(record)
        for key in _extra_keys(attributes):
            entry[key] = attributes[key]
        if not attributes.get("trace_id"):
            entry.update(_trace_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encode(entry)


class TextFormatter(logging.Formatter):
    """Human-readable: `time level logger message key=value ...`."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {**extra_fields(record), **_trace_fields(record)}
        tail = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{self.formatTime(record)} {record.levelname} {record.name} {record.getMessage()}"
        if record.exc_info:
            tail += "\n" + self.formatException(record.exc_info)
        return f"{line} {tail}".rstrip()


def _writes_through(stream: TextIO) -> bool:
    """Whether a write that ends in a newline reaches the file descriptor by itself.

    True for `sys.stderr` as Python opens it: line-buffered (3.9+), or write-through to
    the raw file with `PYTHONUNBUFFERED` / `-u`. Write-through onto a buffered writer
    still holds bytes back, so it does not count.
    """
    if getattr(stream, "line_buffering", False):
        return True
    return bool(getattr(stream, "write_through", False)) and isinstance(
        getattr(stream, "buffer", None), io.RawIOBase
    )


class LineHandler(logging.StreamHandler[TextIO]):
    """`StreamHandler` without the per-line overhead; the same bytes, written as promptly.

    Each record is formatted and written as one `write` of the line and its newline,
    under the handler's lock, and so reaches the descriptor before `handle` returns
    (an operator tailing the output sees it at once; a crash loses no line already
    logged). A stream that does that on its own (see `_writes_through`: stderr) is not
    flushed again; any other stream is flushed per line, as `StreamHandler` does.
    With filters attached, `StreamHandler`'s own path runs.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._flush_each = not _writes_through(stream)

    def setStream(self, stream: TextIO) -> TextIO | None:
        """Switch to `stream` (flushing the old one), as `StreamHandler.setStream` does."""
        old = super().setStream(stream)
        self._flush_each = not _writes_through(self.stream)
        return old

    def handle(self, record: logging.LogRecord) -> bool:
        """Write `record`'s line: `Handler.handle` + `emit` + `flush`, in one call."""
        if self.filters:
            return bool(super().handle(record))
        self.acquire()
        try:
            stream = self.stream
            stream.write(self.format(record) + self.terminator)
            if self._flush_each:
                stream.flush()
        except RecursionError:  # as `StreamHandler.emit`: see issue 36272 of CPython
            raise
        except Exception:
            self.handleError(record)
        finally:
            self.release()
        return True


def setup_logging(config: TelemetryConfig, stream: TextIO | None = None) -> None:
    """Route the root logger to `stream` (default stderr) in the configured format and level."""
    handler = LineHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if config.log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(config.log_level)
    # Neither format prints caller, thread or process: skip collecting them per record
    # (the optimisations the `logging` docs list), a stack walk and lookups per line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
