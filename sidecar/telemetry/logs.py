"""Structured logs: where lines go (`setup_logging`), and the sidecar's per-call lines (`log_event`).

The formats are `log_format`'s and the handler `log_handler`'s. The sidecar's own
per-call lines go through `log_event`, which writes the same bytes without a
`LogRecord` when only the sidecar's handler would see them.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Final, TextIO

from sidecar.config import TelemetryConfig
from sidecar.telemetry.log_format import (
    EXTRA_KEYS_LIMIT,
    HEAD_NAMES,
    JsonFormatter,
    TextFormatter,
    extra_keys,
)
from sidecar.telemetry.log_handler import LineHandler

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
    if len(extra_keys(fields)) != len(fields) or not HEAD_NAMES.isdisjoint(fields):
        return False
    if len(_PLAIN) >= EXTRA_KEYS_LIMIT:
        _PLAIN.clear()
    _PLAIN.update(fields)
    return True


# The OpenTelemetry SDK's logger that quotes an `OTEL_EXPORTER_OTLP_HEADERS` entry it cannot
# parse, value and all: a credential (`Authorization: Bearer ...`) written with a colon.
_HEADER_PARSER_LOG: Final = "opentelemetry.util.re"
HIDDEN_HEADER: Final = "(not shown: a header value may be a credential)"


def _hide_header_values(record: logging.LogRecord) -> bool:
    """Keep the SDK's line about an unparsable header, without the header it quotes."""
    if record.args:
        count = len(record.args) if isinstance(record.args, tuple) else 1
        record.args = (HIDDEN_HEADER,) * count
    return True


# aiohttp's logger that quotes a WebSocket client's `Sec-WebSocket-Protocol` list, raw
# bytes and all, whenever the app picks none of its subprotocols: as the spec has it, so
# nothing to warn about, and a client's header in a log line.
_WEBSOCKET_LOG: Final = "aiohttp.websocket"
_PROTOCOLS_LINE: Final = "%s: Client protocols %r"


def _drop_protocol_mismatch(record: logging.LogRecord) -> bool:
    """Drop aiohttp's line quoting a client's subprotocols; keep any other."""
    return not (isinstance(record.msg, str) and record.msg.startswith(_PROTOCOLS_LINE))


def setup_logging(config: TelemetryConfig, stream: TextIO | None = None) -> None:
    """Route the root logger to `stream` (default stderr) in the configured format and level."""
    handler = LineHandler(stream or sys.stderr, config.log_flush_seconds)
    handler.setFormatter(JsonFormatter() if config.log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
        if isinstance(existing, LineHandler):  # its lines waiting leave before the new ones
            existing.close()
    root.addHandler(handler)
    root.setLevel(config.log_level)
    # Neither format prints caller, thread or process: skip collecting them per record
    # (the optimisations the `logging` docs list), a stack walk and lookups per line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    parser_log = logging.getLogger(_HEADER_PARSER_LOG)
    if _hide_header_values not in parser_log.filters:
        parser_log.addFilter(_hide_header_values)
    websocket_log = logging.getLogger(_WEBSOCKET_LOG)
    if _drop_protocol_mismatch not in websocket_log.filters:
        websocket_log.addFilter(_drop_protocol_mismatch)
