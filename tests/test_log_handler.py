"""`LineHandler`: the bytes `StreamHandler` writes, each line on its descriptor when due,
the per-call lines in batches (the flush delay, warnings, the bound, order kept)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
from collections.abc import Callable

import pytest

from sidecar.config import TelemetryConfig
from sidecar.telemetry import JsonFormatter, log_handler, setup_logging
from sidecar.telemetry.log_format import TextFormatter
from sidecar.telemetry.log_handler import LineHandler
from sidecar.telemetry.logs import log_event
from tests.support.logs import (
    CountingText,
    LogReader,
    events,
    pipe,
    pipe_streams,
    records,
)


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_line_handler_writes_what_stream_handler_writes(formatter: logging.Formatter) -> None:
    ours, theirs = io.StringIO(), io.StringIO()
    line_handler, stream_handler = LineHandler(ours), logging.StreamHandler(theirs)
    for handler in (line_handler, stream_handler):
        handler.setFormatter(formatter)
    for record in records():
        assert line_handler.handle(record)
        stream_handler.handle(record)
    assert ours.getvalue() == theirs.getvalue()
    assert ours.getvalue().count("\n") >= 3


@pytest.mark.parametrize("direct", [False, True], ids=["logging", "log_event"])
@pytest.mark.parametrize(("kind", "make", "by_itself"), list(pipe_streams()))
def test_every_line_reaches_the_descriptor_when_logged(
    kind: str,
    make: Callable[[int], CountingText],
    by_itself: bool,
    direct: bool,
    log_output: Callable[..., LogReader],
    records_made: list[str],
) -> None:
    """One write per line, flushed only where the stream would not pass the line on itself,
    by `logging` or written directly by `log_event`."""
    log_output()  # restores the root logger afterwards
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)  # a line held back fails the read instead of hanging
    stream = make(write_end)
    try:
        setup_logging(TelemetryConfig(log_format="json"), stream=stream)
        log = logging.getLogger("sidecar.stream")
        for n in range(3):
            if direct:
                log_event(log, logging.INFO, "stream_start", {"request_id": f"req_{n}"})
            else:
                log.info("stream_start", extra={"request_id": f"req_{n}"})
            line = os.read(read_end, 65536).decode()  # there now, not at some later flush
            assert line.count("\n") == 1, kind
            assert line.endswith("\n"), kind
            assert json.loads(line)["request_id"] == f"req_{n}"
        assert stream.writes == 3
        assert records_made == ([] if direct else ["sidecar.stream"] * 3)
        assert stream.flushes == (0 if by_itself else 3)
    finally:
        logging.getLogger().handlers.clear()
        stream.close()
        os.close(read_end)


@pytest.mark.parametrize(("kind", "make", "by_itself"), list(pipe_streams()))
async def test_a_loop_turns_per_call_lines_reach_the_descriptor_in_one_write_at_its_end(
    kind: str,
    make: Callable[[int], CountingText],
    by_itself: bool,
    log_output: Callable[..., LogReader],
) -> None:
    """With `log_flush_seconds: 0`, on a running loop, `log_event`'s lines wait for the end
    of the turn and leave together, in order, in one write; a line through `logging`
    leaves at once, after the lines waiting; `flush` writes them too."""
    log_output()
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    stream = make(write_end)

    def written() -> list[str]:
        try:
            return os.read(read_end, 65536).decode().splitlines()
        except BlockingIOError:
            return []

    try:
        setup_logging(TelemetryConfig(log_format="json", log_flush_seconds=0), stream=stream)
        log = logging.getLogger("sidecar.stream")
        for n in range(3):
            log_event(log, logging.INFO, "stream_start", {"request_id": f"req_{n}"})
        assert written() == [], kind  # not before the turn ends
        assert stream.writes == 0
        await asyncio.sleep(0)
        lines = written()
        assert [json.loads(line)["request_id"] for line in lines] == ["req_0", "req_1", "req_2"]
        assert stream.writes == 1
        assert stream.flushes == (0 if by_itself else 1)

        log_event(log, logging.INFO, "stream_start", {"request_id": "req_3"})
        log.warning("at once", extra={"n": 1})  # leaves now, after the line waiting
        assert [json.loads(line)["message"] for line in written()] == ["stream_start", "at once"]
        assert stream.writes == 2

        log_event(log, logging.INFO, "stream_start", {"request_id": "req_4"})
        logging.getLogger().handlers[0].flush()
        assert [json.loads(line)["request_id"] for line in written()] == ["req_4"]
        await asyncio.sleep(0)  # the turn's end finds nothing left to write
        assert written() == []
        assert stream.writes == 3
    finally:
        logging.getLogger().handlers.clear()
        stream.close()
        os.close(read_end)


def test_lines_waiting_on_a_loop_that_never_ran_again_leave_with_the_next_line(
    log_output: Callable[..., LogReader],
) -> None:
    """A loop that stopped before its turn ended: its lines go with the next write,
    whichever loop (or none) makes it; `logging.shutdown` at exit flushes the rest."""
    log_output()  # restores the root logger afterwards
    buffer = io.StringIO()
    setup_logging(TelemetryConfig(log_flush_seconds=0), stream=buffer)
    log = logging.getLogger("sidecar.stream")

    def read() -> list[str]:  # what was written, nothing flushed first
        return buffer.getvalue().splitlines()

    async def log_and_stop() -> None:
        log_event(log, logging.INFO, "first", {"n": 1})
        asyncio.get_running_loop().stop()

    loop = asyncio.new_event_loop()
    try:
        with contextlib.suppress(RuntimeError):  # stopped before the task finished
            loop.run_until_complete(log_and_stop())
    finally:
        loop.close()
    assert read() == []  # its turn never ended

    async def log_second() -> None:
        log_event(log, logging.INFO, "second", {"n": 2})

    asyncio.run(log_second())
    log_event(log, logging.INFO, "third", {"n": 3})  # no loop: at once
    assert [json.loads(line)["message"] for line in read()] == ["first", "second", "third"]


async def test_per_call_lines_wait_out_the_flush_delay_then_leave_in_one_write(
    log_output: Callable[..., LogReader],
) -> None:
    """By default the per-call lines of many turns leave together, `log_flush_seconds`
    after the first of them was logged, in order and in one write."""
    log_output()
    stream, written, close = pipe()
    try:
        setup_logging(TelemetryConfig(log_flush_seconds=0.2), stream=stream)
        log = logging.getLogger("sidecar.stream")
        logged_at = asyncio.get_running_loop().time()
        for n in range(5):  # five turns
            log_event(log, logging.INFO, "stream_start", {"request_id": f"req_{n}"})
            await asyncio.sleep(0)
        assert written() == []  # the turns ended, the delay has not passed
        assert stream.writes == 0
        lines: list[str] = []
        while not lines:
            await asyncio.sleep(0.01)
            lines = written()
        assert asyncio.get_running_loop().time() - logged_at >= 0.2
        assert [json.loads(line)["request_id"] for line in lines] == [f"req_{n}" for n in range(5)]
        assert stream.writes == 1
    finally:
        logging.getLogger().handlers.clear()
        close()


async def test_a_warning_line_takes_the_lines_waiting_out_at_the_end_of_its_turn(
    log_output: Callable[..., LogReader],
) -> None:
    """A per-call line at WARNING or above (`stream_error`, a malformed request's
    `request_rejected`) does not wait out the delay: it leaves, after the lines waiting,
    at the end of the turn that logged it; so does a line through `logging`, at once."""
    log_output()
    stream, written, close = pipe()
    try:
        setup_logging(TelemetryConfig(log_flush_seconds=5), stream=stream)
        log = logging.getLogger("sidecar.stream")
        log_event(log, logging.INFO, "stream_start", {"request_id": "req_0"})
        await asyncio.sleep(0)
        log_event(log, logging.WARNING, "stream_error", {"request_id": "req_0"})
        assert written() == []
        await asyncio.sleep(0)
        assert [json.loads(line)["message"] for line in written()] == [
            "stream_start",
            "stream_error",
        ]
        assert stream.writes == 1

        log_event(log, logging.INFO, "stream_start", {"request_id": "req_1"})
        log.error("at once")
        assert [json.loads(line)["message"] for line in written()] == ["stream_start", "at once"]
        await asyncio.sleep(0.01)
        assert written() == []
        assert stream.writes == 2
    finally:
        logging.getLogger().handlers.clear()
        close()


async def test_lines_waiting_are_bounded_the_last_one_writes_them_all(
    log_output: Callable[..., LogReader],
) -> None:
    """However fast calls come, at most `MAX_WAITING` lines wait: the one that reaches it
    writes them, in one write; the timer then finds nothing left."""
    log_output()
    stream, written, close = pipe()
    try:
        setup_logging(TelemetryConfig(log_flush_seconds=5), stream=stream)
        log = logging.getLogger("sidecar.stream")
        for n in range(log_handler.MAX_WAITING - 1):
            log_event(log, logging.INFO, "stream_start", {"n": n})
        assert written() == []
        log_event(log, logging.INFO, "stream_start", {"n": log_handler.MAX_WAITING - 1})
        lines = written()
        assert [json.loads(line)["n"] for line in lines] == list(range(log_handler.MAX_WAITING))
        assert stream.writes == 1
    finally:
        logging.getLogger().handlers.clear()
        close()


def test_line_handler_with_filters_applies_them(log_output: Callable[..., LogReader]) -> None:
    read = log_output()
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler, LineHandler)
    handler.addFilter(lambda record: record.getMessage() != "dropped")
    logging.getLogger("sidecar.test").warning("dropped")
    logging.getLogger("sidecar.test").warning("kept")
    assert [entry["message"] for entry in events(read())] == ["kept"]


def test_line_handler_set_stream_follows_the_new_stream() -> None:
    first, second = io.StringIO(), io.StringIO()
    handler = LineHandler(first)
    handler.setFormatter(JsonFormatter())
    assert handler.setStream(second) is first
    handler.handle(records()[0])
    assert first.getvalue() == ""
    assert json.loads(second.getvalue())["output_tokens"] == 7


async def test_closing_writes_the_lines_waiting_and_nothing_after(
    log_output: Callable[..., LogReader],
) -> None:
    """`close` writes the lines waiting at once and drops the timer that would have: the
    stream can be closed right after, with no line lost and no write into it later."""
    log_output()
    stream, written, close = pipe()
    try:
        setup_logging(TelemetryConfig(log_flush_seconds=0.05), stream=stream)
        (handler,) = logging.getLogger().handlers
        assert isinstance(handler, LineHandler)
        log_event(logging.getLogger("sidecar.stream"), logging.INFO, "stream_start", {"n": 1})
        assert written() == []
        handler.close()
        assert [json.loads(line)["n"] for line in written()] == [1]
        await asyncio.sleep(0.1)  # past the delay: the timer was dropped
        assert written() == []
        assert stream.writes == 1
    finally:
        logging.getLogger().handlers.clear()
        close()


async def test_setting_up_logging_again_writes_the_old_handlers_lines_first(
    log_output: Callable[..., LogReader],
) -> None:
    """Lines waiting in the handler `setup_logging` replaces leave before the new one's."""
    log_output()
    stream, written, close = pipe()
    try:
        setup_logging(TelemetryConfig(log_flush_seconds=5), stream=stream)
        log = logging.getLogger("sidecar.stream")
        log_event(log, logging.INFO, "stream_start", {"n": 1})
        setup_logging(TelemetryConfig(log_flush_seconds=0), stream=stream)
        assert [json.loads(line)["n"] for line in written()] == [1]
        log_event(log, logging.INFO, "stream_start", {"n": 2})
        await asyncio.sleep(0)
        assert [json.loads(line)["n"] for line in written()] == [2]
    finally:
        logging.getLogger().handlers.clear()
        close()
