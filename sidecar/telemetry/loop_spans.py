"""Ended spans encoded on the event loop the turn after they end, batched there, posted by a thread.

The SDK's `BatchSpanProcessor` gives ended spans to a thread of its own, which wakes
for a batch, encodes it and posts it: ~80 µs of that thread per call at 50 callers,
and the event loop pays again each time the two threads hand the GIL over (a loop
that wants it back waits out the switch interval, 5 ms, if the thread does not let
go). `LoopSpanProcessor` keeps the spans on the loop. `on_end` keeps a span (one
append) and schedules, once per turn, a callback that encodes every span ended since
into its wire entry (`SpanQueue.encode`, `SpanEncoder.entry`: ~15-20 µs a span). That
callback runs at the loop's next turn, after the writes of the task that ended the
spans (aiohttp writes a handler's response in the turn the handler returns; a stream
has written its last bytes before its spans end), ahead of that turn's I/O: each span
is encoded once, off its own call's path to the first token, and a call in flight
meets at most one such callback per turn, not a slice of an export's batch in each of
its turns. The queue holds those bytes, not the spans (~0.6 KiB a span instead of
~0.9 KiB, nothing the garbage collector walks). When a batch is full (in the turn
that encoded it), or the delay has passed since the first span waiting, its entries
are joined into the request (`SpanEncoder.request`: no work per span) and handed to
one worker thread that only posts it (`span_poster`: the SDK's exporter, its retries,
compression, headers, TLS files and proxies; the socket calls release the GIL); one
task waits for the posts, and joins the next batch while a full one is waiting.

As the SDK's processor: sampled spans only; `OTEL_BSP_SCHEDULE_DELAY`,
`OTEL_BSP_MAX_QUEUE_SIZE` (in spans, encoded or not), `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`
and `OTEL_BSP_EXPORT_TIMEOUT` read by the SDK's own functions; a full queue drops its
oldest span (said in a warning); one export at a time; `force_flush` and `shutdown`
export what is queued, spans not encoded yet included, `shutdown` within
`OTEL_BSP_EXPORT_TIMEOUT`, or by the exit's deadline when sooner (then it shuts the
exporter down, ending the retries of a post under way: the SDK's processor waits a fixed
30 s). A span the encoder refuses is
logged as the SDK's exporter logs a batch it cannot encode, and dropped: that span
alone (the SDK's exporter drops the whole batch). A span ended on another thread
reaches the loop through `call_soon_threadsafe`; with no loop running at all (a
command, a test, after the server stopped) spans are encoded and exported from the
thread that ends them, as a batch fills, and at shutdown. A batch is never lost to its
task: cancelled (a loop that ends cancels its tasks) before its post started, it is
queued again for the next loop or for shutdown; spans whose encoding turn never came
are encoded by the next loop, a flush or shutdown. On the loop's own thread, where
nothing can be awaited, a flush or shutdown posts through the poster and waits for it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from asyncio import AbstractEventLoop, Handle, Task, TimerHandle
from threading import get_ident
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from sidecar.telemetry.otlp_spans import HttpSpanExporter
from sidecar.telemetry.span_encoder import Run
from sidecar.telemetry.span_poster import Posting, SpanPoster
from sidecar.telemetry.span_queue import SpanQueue

log = logging.getLogger(__name__)


def batch_settings(
    max_queue_size: int | None = None,
    schedule_delay_millis: float | None = None,
    max_export_batch_size: int | None = None,
    export_timeout_millis: float | None = None,
) -> tuple[int, float, int, float]:
    """Queue size, delay, batch size and export timeout: those given, else `OTEL_BSP_*`.

    The SDK's reading of the variables (its log line for a value that is not a number)
    and its checks of the result (a `ValueError`, as its batch span processor raises).
    """
    sdk: Any = BatchSpanProcessor  # static methods, untyped
    queue_size = sdk._default_max_queue_size() if max_queue_size is None else max_queue_size
    delay = (
        sdk._default_schedule_delay_millis()
        if schedule_delay_millis is None
        else schedule_delay_millis
    )
    batch = (
        sdk._default_max_export_batch_size()
        if max_export_batch_size is None
        else max_export_batch_size
    )
    timeout = (
        sdk._default_export_timeout_millis()
        if export_timeout_millis is None
        else export_timeout_millis
    )
    sdk._validate_arguments(queue_size, delay, batch)
    return queue_size, delay, batch, timeout


class LoopSpanProcessor(SpanProcessor):
    """The SDK's batch span processor, its batching and encoding done on the event loop."""

    def __init__(
        self,
        exporter: HttpSpanExporter,
        max_queue_size: int | None = None,
        schedule_delay_millis: float | None = None,
        max_export_batch_size: int | None = None,
        export_timeout_millis: float | None = None,
    ) -> None:
        queue_size, delay, batch, timeout = batch_settings(
            max_queue_size, schedule_delay_millis, max_export_batch_size, export_timeout_millis
        )
        self.exporter = exporter
        self.max_queue_size: int = queue_size
        self.max_export_batch_size: int = batch
        self.schedule_delay: float = delay / 1e3
        self.export_timeout: float = timeout / 1e3
        self._queue = SpanQueue(exporter.encoder, queue_size, batch, log)
        self._poster = SpanPoster(exporter, log)
        self._loop: AbstractEventLoop | None = None
        self._thread = 0  # the bound loop's thread
        self._timer: TimerHandle | None = None
        self._task: Task[None] | None = None
        self._encoding: Handle | None = None  # the next turn's encoding of spans ended
        self._shutdown = False  # no spans taken any more
        self._closed = False  # nothing exported any more (shutdown's flush is over)

    # ------------------------------------------------------------------ ending spans

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Nothing: spans are taken when they end."""

    def on_end(self, span: ReadableSpan) -> None:
        """Queue `span` if sampled, to be encoded at the loop's next turn."""
        if not span.context.trace_flags.sampled:
            return
        # On the loop's own thread while it runs, that loop is the one running here. (The
        # thread's id, not `asyncio._get_running_loop()`: on Python 3.11 that asks the
        # kernel for the process id, a system call per span.)
        loop = self._loop
        if loop is not None and get_ident() == self._thread and loop.is_running():
            self._add(span)
        else:
            self._add_elsewhere(span)

    def _add(self, span: ReadableSpan) -> None:
        # On the loop's thread: the span is encoded at the loop's next turn, with every
        # span ended before it (after the writes of the task that ended it).
        if self._shutdown:
            return
        self._queue.add(span)
        if self._encoding is None:
            loop = self._loop
            assert loop is not None
            self._encoding = loop.call_soon(self._encode)

    def _add_elsewhere(self, span: ReadableSpan) -> None:
        """`span` ended off the bound loop: bind the loop running here, hand it over, or export here."""
        if self._shutdown:
            return
        running = asyncio._get_running_loop()
        bound = self._loop
        if running is not None and (bound is None or not bound.is_running()):
            # The first loop, or the one that replaced a stopped one (whose callbacks and
            # export, if any, will not run: what they held is still queued).
            self._loop, self._thread = running, get_ident()
            self._timer = self._task = self._encoding = None
            self._add(span)
            return
        if bound is not None and bound.is_running():
            try:
                bound.call_soon_threadsafe(self._add, span)
                return
            except RuntimeError:  # closed meanwhile
                pass
        with self._poster.lock:  # no loop running anywhere: this thread encodes and exports
            queue = self._queue
            queue.add(span)
            queue.encode()
            if queue.full():
                self._poster.post_here(*queue.take())

    # ------------------------------------------------------------------ exporting on the loop

    def _encode(self) -> None:
        """The spans ended since the last turn, encoded; a full batch starts an export."""
        self._encoding = None
        queue = self._queue
        queue.encode()
        if self._task is None and queue and not self._closed:
            loop = self._loop
            assert loop is not None
            self._schedule(loop)

    def _schedule(self, loop: AbstractEventLoop) -> None:
        """Spans wait and no export runs: a full batch starts one now, else the delay's
        timer is armed (if it is not already)."""
        if self._queue.full():
            self._start(flush=False)
        elif self._timer is None:
            self._timer = loop.call_later(self.schedule_delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._task is None and self._queue and not self._closed:
            self._start(flush=False)

    def _start(self, flush: bool) -> None:
        """Start an export: its first batch goes to the poster in this turn (the one after
        the writes, when spans just ended), and a task waits for the posts."""
        loop = self._loop
        assert loop is not None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sent = self._send()
        if sent is not None:
            self._task = loop.create_task(self._export(flush, *sent))

    def _send(self) -> tuple[list[Run], Posting | None] | None:
        """Encode what ended, join the oldest batch and hand it to the poster: the batch and
        its post (None: it could not be written, logged); None if nothing is queued or the
        poster is shut down (from another thread)."""
        queue = self._queue
        queue.encode()  # spans ended since the last turn (a flush comes before it)
        if not queue.entries:
            return None
        batch, count = queue.take()
        try:
            posting = self._poster.submit(batch, count)
        except RuntimeError:  # shut down meanwhile, from another thread: it stays queued
            queue.requeue(batch)
            return None
        self._poster.posting = posting
        return batch, posting

    async def _export(self, flush: bool, batch: list[Run], posting: Posting | None) -> None:
        """Wait for the post of `batch`, then export more while a full batch is waiting
        (all of them: `flush`).

        A batch is only joined into a request (its spans are encoded already) and handed
        to the poster. Cancelled (a loop that ends cancels its tasks), the batch goes
        back to the queue unless it is being posted, and no export is started again:
        the next loop, or `shutdown`, exports it. Once shut down, nothing more is posted.
        """
        loop = asyncio.get_running_loop()
        queue = self._queue
        poster = self._poster
        cancelled = False
        try:
            while True:
                if posting is not None:  # None: dropped, as the SDK's exporter drops it (logged)
                    poster.posting = posting
                    try:
                        await asyncio.wrap_future(posting, loop=loop)
                    except asyncio.CancelledError:
                        cancelled = True
                        if posting.cancel():  # not started: it stays queued
                            queue.requeue(batch)
                        raise
                    finally:
                        poster.posting = None
                if self._closed or not (flush or queue.full()):
                    break
                sent = self._send()
                if sent is None:
                    break
                batch, posting = sent
        finally:
            if self._task is asyncio.current_task():
                self._task = None
            waiting = queue and not (cancelled or self._closed or loop.is_closed())
            if waiting and self._task is None and loop is self._loop:
                self._schedule(loop)

    # ------------------------------------------------------------------ flush and shutdown

    async def flush(self) -> None:
        """Export everything queued, waiting for an export under way first."""
        while not self._closed:
            task = self._task
            if task is not None and not task.done():
                await asyncio.shield(task)
            elif self._queue:
                self._start(flush=True)
            else:
                return

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Export everything queued; False if that did not end within `timeout_millis`.

        From another thread the loop exports (`flush`), and this waits for it; on the
        loop's own thread, or with no loop running, this hands the spans to the poster
        and waits for it (blocking that thread, as the SDK's `force_flush` does).
        """
        if self._closed:
            return False
        deadline = time.monotonic() + timeout_millis / 1e3
        while True:
            loop = self._loop
            if loop is None or not loop.is_running() or asyncio._get_running_loop() is loop:
                return self._poster.drain(self._queue, deadline)
            flushing = self.flush()
            try:
                future = asyncio.run_coroutine_threadsafe(flushing, loop)
            except RuntimeError:  # closed meanwhile: no loop running any more
                flushing.close()
                continue
            try:
                future.result(max(deadline - time.monotonic(), 0.0))
            except concurrent.futures.TimeoutError:
                future.cancel()  # the flush, not the export under way
                return False
            except concurrent.futures.CancelledError:
                # The loop cancelled its tasks (it is ending): flush again, from here
                # once it has stopped, while time is left.
                if time.monotonic() >= deadline:
                    return False
            else:
                return True

    def shutdown(self, deadline: float | None = None) -> None:
        """Stop taking spans, export what is queued, and shut the exporter down.

        All within `OTEL_BSP_EXPORT_TIMEOUT`, and by `deadline` (`time.monotonic()`) when
        given and sooner: past it, what is left is given up (said in a log line) and the
        exporter is shut down, which ends the retries of a post still under way (the
        SDK's client waits out its backoff for up to its own timeout). Every post from
        here on ends by then too (`HttpSpanExporter.finish_by`), or within its own
        `OTEL_EXPORTER_OTLP_TIMEOUT` when sooner; one stuck since before is not waited
        for past it (its thread is a daemon).
        """
        if self._shutdown:
            return
        self._shutdown = True  # spans ended from now on are not taken, as in the SDK
        now = time.monotonic()
        timeout = self.export_timeout if self.export_timeout > 0 else 30.0
        if deadline is not None:
            timeout = min(timeout, max(deadline - now, 0.0))
        deadline = now + timeout
        self.exporter.finish_by(deadline)
        self.force_flush(int(timeout * 1e3))
        self._closed = True  # an export task still running posts nothing more
        timer, self._timer = self._timer, None
        loop = self._loop
        if timer is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop runs no timer
                loop.call_soon_threadsafe(timer.cancel)
        self._poster.close(deadline)
        left = len(self._queue)
        if left:
            log.warning(
                "spans not exported at shutdown: the export timeout passed",
                extra={"spans": left, "timeout_seconds": timeout},
            )
