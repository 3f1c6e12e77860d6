"""Batches of encoded spans joined into requests and posted by one thread with the SDK's exporter.

The loop span processor's (`loop_spans`) side off the event loop: a batch taken from the
`SpanQueue` is joined into its request (`SpanEncoder.request`, no work per span) and
handed to one worker thread (a daemon: a post stuck at exit is given up with the process,
never waited for) that only posts it (`HttpSpanExporter.send`: the SDK's
retries, compression, headers, TLS files and proxies; the socket calls release the
GIL). Where no event loop can export (its own thread, which cannot await, or no loop
running at all) the queue is drained here, the caller waiting for the posts.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, attach, detach, set_value
from opentelemetry.sdk.trace.export import SpanExportResult

from sidecar.telemetry.otlp_spans import HttpSpanExporter
from sidecar.telemetry.span_encoder import Run
from sidecar.telemetry.span_queue import SpanQueue

Posting = concurrent.futures.Future[SpanExportResult]
_STOP: Final = None  # what `_Worker` reads to end
T = TypeVar("T")


class _Worker:
    """One daemon thread running submitted calls in order, each result in a `Future`.

    `ThreadPoolExecutor`'s threads are joined at the interpreter's exit: a post stuck on a
    collector that never answers (up to `OTEL_EXPORTER_OTLP_TIMEOUT` of retries) would hold
    the process past its shutdown bound. A daemon thread is not waited for, as the SDK's
    own batch processors' threads are not: shutdown gives the posts its deadline, and what
    is still under way then is given up with the process.
    """

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[
            tuple[concurrent.futures.Future[Any], Callable[[], Any]] | None
        ]
        self._calls = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()  # a call is queued before the stop, or refused
        self._name = name
        self._thread: threading.Thread | None = None  # started with the first call

    def submit(self, call: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run `call` after those submitted before; raises RuntimeError once shut down."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new posts after shutdown")
            self._calls.put((future, call))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        return future

    def shutdown(self) -> None:
        """Take no more calls and cancel those not started; the one running is not waited for."""
        with self._lock:  # no call is queued after this
            self._closed = True
        while True:
            try:
                item = self._calls.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        self._calls.put(_STOP)

    def _run(self) -> None:
        while (item := self._calls.get()) is not None:
            future, call = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as error:  # a call's own failure: its future's
                future.set_exception(error)


class SpanPoster:
    """Requests of span batches, posted one at a time by a thread of their own."""

    def __init__(self, exporter: HttpSpanExporter, log: logging.Logger) -> None:
        self.exporter = exporter
        self.posting: Posting | None = None  # the export task's post under way
        self.lock = threading.Lock()  # exports from threads where no loop exports
        self._log = log  # the processor's: its log lines
        self._pool = _Worker("OtelSpanPoster")

    def submit(self, batch: list[Run], count: int) -> Posting | None:
        """Post a batch of `count` spans on the poster's thread (None: it cannot be written).

        Raises RuntimeError once shut down.
        """
        request = self._request(batch)
        if request is None:
            return None
        return self._pool.submit(functools.partial(self._post, request, count))

    def post_here(self, batch: list[Run], count: int) -> None:
        """Post a batch from this thread (one where no loop runs), as the SDK's processor would."""
        request = self._request(batch)
        if request is not None:
            self._post(request, count)

    def drain(self, queue: SpanQueue, deadline: float) -> bool:
        """Encode and post everything queued, waiting for each post; False past `deadline`.

        Only where no export task can run meanwhile: on the loop's own thread, or with
        no loop running. A post still retrying at the deadline is left to `close`.
        """
        with self.lock:
            queue.encode()
            while queue.entries:
                posting = self.submit(*queue.take())
                if posting is None:
                    continue
                try:
                    posting.result(max(deadline - time.monotonic(), 0.0))
                except concurrent.futures.TimeoutError:
                    return False
            return True

    def close(self, deadline: float) -> None:
        """Wait for the post under way until `deadline`, then shut the exporter down (which
        ends its retries) and the thread."""
        posting = self.posting
        if posting is not None:
            concurrent.futures.wait([posting], max(deadline - time.monotonic(), 0.0))
        shutdown: Any = self.exporter.shutdown  # the SDK's, untyped
        shutdown()
        self._pool.shutdown()

    def _request(self, batch: list[Run]) -> bytes | None:
        """The request of a batch; None if it cannot be written (logged as the SDK logs it)."""
        try:
            return self.exporter.encoder.request(batch)
        except Exception as error:
            self._log.error("Failed to encode span batch: %s", error)
            return None

    def _post(self, request: bytes, count: int) -> SpanExportResult:
        # On the poster thread (or one with no loop): the SDK's exporter posts; an export
        # is never traced itself (the SDK's processor marks it so for instrumentations).
        token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
        try:
            return self.exporter.send(request, count)
        except Exception:  # the SDK's processor logs it and goes on
            self._log.exception("Exception while exporting Span.")
            return SpanExportResult.FAILURE
        finally:
            detach(token)
