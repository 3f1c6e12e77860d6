"""Structured logs: JSON lines (default) or text, carrying the trace and span ids.

Fields come from `extra={...}`; `trace_id`/`span_id` are taken from the record when
given, else from the current OpenTelemetry context. Nothing here reads prompts or
secrets: callers decide what goes into `extra`. The sidecar's own per-call lines go
through `log_event`, which writes the same bytes without a `LogRecord` when only the
sidecar's handler would see them.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import sys
import time
from typing import Any, Final, TextIO

import orjson
from opentelemetry import trace

from sidecar.config import TelemetryConfig

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
_HEAD_NAMES: Final = frozenset({"time", "level", "logger"})

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
        for key in _extra_keys(attributes):
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
    if len(_HEADS) >= _EXTRA_KEYS_LIMIT:
        _HEADS.clear()
    _HEADS[levelname, name, message] = head
    return head


class TextFormatter(logging.Formatter):
    """Human-readable: `time level logger message key=value ...`."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {**extra_fields(record), **_trace_fields(record)}
        tail = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{self.formatTime(record)} {record.levelname} {record.name} {record.getMessage()}"
        if record.exc_info:
            tail += "\n" + self.formatException(record.exc_info)
        return f"{line} {tail}".rstrip()


# Per-call lines waiting past this many are written at once: the memory they hold, and
# what a process killed outright loses, stay bounded whatever the rate of calls.
_MAX_WAITING: Final = 256


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
    """`StreamHandler` without the per-line overhead; the same bytes, written in batches.

    A record through `logging` (`handle`) is formatted and written at once, as one `write`
    of the line and its newline under the handler's lock: it reaches the descriptor
    before `handle` returns. The per-call lines (`write_event`, from `log_event`) logged
    on a running event loop are formatted at once and written together, in one `write`:
    at most `flush_seconds` after the first of them was logged (0: at the end of the
    loop turn that logged it), at the end of the turn for a line at WARNING or above,
    at once when `_MAX_WAITING` lines wait; elsewhere (no loop running on the thread) at
    once. That is one system call, and one wake-up of whatever reads the stream, for the
    lines of many calls instead of one per line. Lines keep their order: whatever is
    written first writes the lines still waiting (`handle`, a line from another thread,
    `flush`, `setStream`, and `logging.shutdown` at exit, which flushes). A stream that
    passes a line on by itself (see `_writes_through`: stderr) is not flushed again; any
    other stream is flushed per write, as `StreamHandler` does. With filters attached,
    `StreamHandler`'s own path runs.
    """

    def __init__(self, stream: TextIO, flush_seconds: float = 0.0) -> None:
        super().__init__(stream)
        self.flush_seconds = flush_seconds
        self._flush_each = not _writes_through(stream)
        self._pending: list[str] = []  # lines waiting, each with its newline
        self._due: asyncio.AbstractEventLoop | None = None  # the loop whose callback writes them
        self._timer: asyncio.TimerHandle | None = (
            None  # that callback, while it waits out the delay
        )

    def setStream(self, stream: TextIO) -> TextIO | None:
        """Switch to `stream` (the lines waiting written to the old one, which is flushed),
        as `StreamHandler.setStream` does."""
        old = super().setStream(stream)
        self._flush_each = not _writes_through(self.stream)
        return old

    def flush(self) -> None:
        """Write the lines waiting, then flush the stream."""
        lock = self.lock
        assert lock is not None  # made by `Handler.__init__`
        with lock:
            if self._pending:
                self._write_pending()
            super().flush()

    def handle(self, record: logging.LogRecord) -> bool:
        """Write `record`'s line (after the lines waiting): `Handler.handle` + `emit` +
        `flush`, in one call."""
        if self.filters:
            if self._pending:
                self.flush()
            return bool(super().handle(record))
        self.acquire()
        try:
            line = self.format(record) + self.terminator
            self._write(line)
        except RecursionError:  # as `StreamHandler.emit`: see issue 36272 of CPython
            raise
        except Exception:
            self.handleError(record)
        finally:
            self.release()
        return True

    def write_event(
        self,
        formatter: JsonFormatter,
        logger: logging.Logger,
        level: int,
        message: str,
        fields: dict[str, Any],
    ) -> None:
        """Write what `handle` writes for `logger.log(level, message, extra=fields)`'s record:
        at the end of this loop turn on a running loop, else at once.

        For `log_event`, which has checked that this is all that call would do. When it
        is written: see the class.
        """
        created = time.time()  # when logged, as `LogRecord` takes it (before the lock)
        lock = self.lock  # `acquire` / `release` without their two calls per line
        assert lock is not None  # made by `Handler.__init__`
        with lock:
            try:
                line = (
                    formatter.event_line(created, level, logger.name, message, fields)
                    + self.terminator
                )
                loop = asyncio._get_running_loop()
                if loop is None:
                    self._write(line)
                    return
                pending = self._pending
                pending.append(line)
                if len(pending) >= _MAX_WAITING:
                    self._write_pending()  # the callback scheduled finds nothing left
                    return
                if self._due is loop:  # a callback of this loop writes them
                    if level < logging.WARNING or self._timer is None:
                        return
                    self._timer.cancel()  # a warning: not after the delay, at the turn's end
                self._due = loop
                if level >= logging.WARNING or not self.flush_seconds:
                    self._timer = None
                    loop.call_soon(self._end_of_turn)
                else:
                    self._timer = loop.call_later(self.flush_seconds, self._end_of_turn)
            except RecursionError:
                raise
            except Exception:  # reported as `handle` reports it, with the record it would have had
                self.handleError(
                    logger.makeRecord(
                        logger.name, level, "(unknown file)", 0, message, (), None, extra=fields
                    )
                )

    def _end_of_turn(self) -> None:
        """The lines waiting, in one write (unless something wrote them first)."""
        lock = self.lock
        assert lock is not None
        with lock:
            self._due = self._timer = None
            if not self._pending:
                return
            try:
                self._write_pending()
            except RecursionError:
                raise
            except Exception:
                self.handleError(logging.makeLogRecord({"msg": "per-call log lines"}))

    def _write(self, line: str) -> None:
        """Write `line` after the lines waiting, in one write (under the lock)."""
        self._pending.append(line)
        self._write_pending()

    def _write_pending(self) -> None:
        """Write the lines waiting, in one write (under the lock); they are gone either way."""
        pending = self._pending
        text = "".join(pending)
        pending.clear()
        stream = self.stream
        stream.write(text)
        if self._flush_each:
            stream.flush()


# Field names found plain so far: a call site logs the same few names every time, so
# most lines are settled by one C-level subset test (bounded: names come from code).
_PLAIN: Final[set[str]] = set()


def log_event(logger: logging.Logger, level: int, message: str, fields: dict[str, Any]) -> None:
    """`logger.log(level, message, extra=fields)`: the same line, without a `LogRecord` when
    the sidecar's own JSON handler is the only thing that would see it.

    Writes directly only when that call would do nothing but build a record and hand it
    to the one `LineHandler` on the root logger, to be formatted by its `JsonFormatter`:
    - the logger is enabled for `level` (`isEnabledFor`: its level, `disabled`,
      `logging.disable`; cached by `logging`), is a plain `Logger` (no `makeRecord` or
      `handle` of its own) and records are plain `LogRecord`s (a record factory could
      add attributes, which `JsonFormatter` would print as fields);
    - the logger and each ancestor below the root have no handler and no filter and
      propagate (`Logger.handle`, `callHandlers`): the root's handlers are all it reaches;
    - the root has no filter and one handler, exactly a `LineHandler` (its `handle` not
      overridden) with no filter, a level at or below `level`, and exactly a
      `JsonFormatter` (its `format` not overridden);
    - every field is a name `makeRecord` takes and `format` prints after the line's
      head (`plain_fields`).
    `JsonFormatter.event_line` then builds what `format` builds from that record: the
    same `time` (taken when logged), level name, logger name, message (no args: the
    message itself), fields in order, trace ids from the fields or the current span,
    and encoder; `write_event` writes it as `handle` does (one write, same lock, same
    flush). Anything else (pytest's `caplog` handlers, a filter, another handler, the
    text format, a level that drops the line) goes through `logging` as before. The
    checks are a few attribute reads and calls `logging` caches; the record machinery
    they skip is about half of what a line costs through `logging`.
    """
    root = logging.root
    handlers = root.handlers
    if (
        len(handlers) == 1
        and type(handler := handlers[0]) is LineHandler
        and type(formatter := handler.formatter) is JsonFormatter
        and not handler.filters
        and handler.level <= level
        and not root.filters
        and type(logger) is logging.Logger
        and logger.isEnabledFor(level)
        and logging.getLogRecordFactory() is logging.LogRecord
        and (fields.keys() <= _PLAIN or plain_fields(fields))  # `plain_fields`' own first test
    ):
        node: logging.Logger | None = logger
        while node is not root:
            if node is None or node.handlers or node.filters or not node.propagate:
                break
            node = node.parent
        else:
            handler.write_event(formatter, logger, level, message, fields)
            return
    # As if called where `log_event` was (`stacklevel`): a record names its caller.
    logger.log(level, message, extra=fields, stacklevel=2)


def plain_fields(fields: dict[str, Any]) -> bool:
    """Whether `makeRecord` takes every field as an extra and `JsonFormatter` prints each
    after the line's head: none is a `LogRecord` attribute (it would raise), starts with
    `_` (not printed) or is `time`, `level` or `logger` (printed in the head's place)."""
    if fields.keys() <= _PLAIN:
        return True
    if len(_extra_keys(fields)) != len(fields) or not _HEAD_NAMES.isdisjoint(fields):
        return False
    if len(_PLAIN) >= _EXTRA_KEYS_LIMIT:
        _PLAIN.clear()
    _PLAIN.update(fields)
    return True


def setup_logging(config: TelemetryConfig, stream: TextIO | None = None) -> None:
    """Route the root logger to `stream` (default stderr) in the configured format and level."""
    handler = LineHandler(stream or sys.stderr, config.log_flush_seconds)
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
