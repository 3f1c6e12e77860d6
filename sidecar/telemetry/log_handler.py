"""`LineHandler`: the root logger's handler, writing the per-call lines in batches (see the class)."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from typing import Any, Final, TextIO

from sidecar.telemetry.log_format import JsonFormatter

# Per-call lines waiting past this many are written at once: the memory they hold, and
# what a process killed outright loses, stay bounded whatever the rate of calls.
MAX_WAITING: Final = 256


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
    at once when `MAX_WAITING` lines wait; elsewhere (no loop running on the thread) at
    once. That is one system call, and one wake-up of whatever reads the stream, for the
    lines of many calls instead of one per line. Lines keep their order: whatever is
    written first writes the lines still waiting (`handle`, a line from another thread,
    `flush`, `close` (which also drops the callback due), `setStream`, and
    `logging.shutdown` at exit, which flushes). A stream that passes a line on by itself
    (see `_writes_through`: stderr) is not flushed again; any other stream is flushed
    per write, as `StreamHandler` does. With filters attached, `StreamHandler`'s own
    path runs.
    """

    def __init__(self, stream: TextIO, flush_seconds: float = 0.0) -> None:
        super().__init__(stream)
        self.flush_seconds = flush_seconds
        self._flush_each = not _writes_through(stream)
        self._pending: list[str] = []  # lines waiting, each with its newline
        # The loop whose callback writes the lines waiting, and that callback while it
        # waits out the flush delay (None: it runs at the end of the turn, or none is due).
        self._due: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def setStream(self, stream: TextIO) -> TextIO | None:
        """Switch to `stream` (the lines waiting written to the old one, which is flushed),
        as `StreamHandler.setStream` does."""
        old = super().setStream(stream)
        self._flush_each = not _writes_through(self.stream)
        return old

    def close(self) -> None:
        """Write the lines waiting and drop the callback that would have: nothing is lost,
        nothing is written after the handler is closed (its stream may be closed next)."""
        lock = self.lock
        assert lock is not None
        with lock:
            if self._timer is not None:
                self._timer.cancel()
            self._due = self._timer = None
            if self._pending:
                self._write_pending()
        super().close()

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
        on a running loop when it is due (see the class), else at once.

        For `log_event`, which has checked that this is all that call would do.
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
                if len(pending) >= MAX_WAITING:
                    self._write_pending()  # the callback scheduled finds nothing left
                    return
                if self._due is loop:  # a callback of this loop writes them
                    if level < logging.WARNING or self._timer is None:
                        return
                    self._timer.cancel()  # a warning: not after the delay, at the turn's end
                self._due = loop
                if level >= logging.WARNING or not self.flush_seconds:
                    self._timer = None
                    loop.call_soon(self._write_when_due)
                else:
                    self._timer = loop.call_later(self.flush_seconds, self._write_when_due)
            except RecursionError:
                raise
            except Exception:  # reported as `handle` reports it, with the record it would have had
                self.handleError(
                    logger.makeRecord(
                        logger.name, level, "(unknown file)", 0, message, (), None, extra=fields
                    )
                )

    def _write_when_due(self) -> None:
        """The lines waiting, in one write (unless something wrote them first): the loop's
        callback, at the end of a turn or once the flush delay has passed."""
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
