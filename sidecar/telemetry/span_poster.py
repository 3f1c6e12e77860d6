"""Batches of encoded spans joined into requests and posted by one thread with the SDK's exporter.

The loop span processor's (`loop_spans`) side off the event loop: a batch taken from the
`SpanQueue` is joined into its request (`SpanEncoder.request`, no work per span) and
handed to one worker thread that only posts it (`HttpSpanExporter.send`: the SDK's
retries, compression, headers, TLS files and proxies; the socket calls release the
GIL). Where no event loop can export (its own thread, which cannot await, or no loop
running at all) the queue is drained here, the caller waiting for the posts.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from typing import Any

from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, attach, detach, set_value
from opentelemetry.sdk.trace.export import SpanExportResult

from sidecar.telemetry.otlp_spans import HttpSpanExporter
from sidecar.telemetry.span_encoder import Run
from sidecar.telemetry.span_queue import SpanQueue

Posting = concurrent.futures.Future[SpanExportResult]


class SpanPoster:
    """Requests of span batches, posted one at a time by a thread of their own."""

    def __init__(self, exporter: HttpSpanExporter, log: logging.Logger) -> None:
        self.exporter = exporter
        self.posting: Posting | None = None  # the export task's post under way
        self.lock = threading.Lock()  # exports from threads where no loop exports
        self._log = log  # the processor's: its log lines
        self._pool = concurrent.futures.ThreadPoolExecutor(1, "OtelSpanPoster")

    def submit(self, batch: list[Run], count: int) -> Posting | None:
        """Post a batch of `count` spans on the poster's thread (None: it cannot be written).

        Raises RuntimeError once shut down.
        """
        request = self._request(batch)
        return None if request is None else self._pool.submit(self._post, request, count)

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
        self._pool.shutdown(wait=False, cancel_futures=True)

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
