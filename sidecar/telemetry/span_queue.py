"""The spans a span processor holds for export: kept as they end, encoded once, dropped when full.

A span ended is kept as it is (`add`, on the hot path: one append), and encoded soon
after into its wire entry (`encode`, `SpanEncoder.entry`): from then on the queue holds
those bytes alone, in runs of one resource and scope (the runs hold the resource and
scope), not the span with its attributes, contexts and status, and nothing the garbage
collector walks. A batch taken (`take`) is only joined into a request
(`SpanEncoder.request`). The queue holds `max_size` spans, ended and encoded alike: a
span added to a full queue drops the oldest (a warning at the first drop, the count at
the next batch taken). A span the encoder refuses is logged as the SDK's exporter logs
a batch it cannot encode, and dropped alone.
"""

from __future__ import annotations

import collections
import logging
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from sidecar.telemetry.span_encoder import Run, SpanEncoder


class SpanQueue:
    """Ended spans, then their encoded entries, oldest first, `max_size` at most in all."""

    def __init__(
        self, encoder: SpanEncoder, max_size: int, batch_size: int, log: logging.Logger
    ) -> None:
        self.max_size = max_size
        self.batch_size = batch_size
        self.ended: collections.deque[ReadableSpan] = collections.deque()  # not encoded yet
        self.entries: collections.deque[bytes] = collections.deque()  # encoded, older
        # [resource, scope, count] of the entries in order: consecutive ones share a run.
        self._runs: collections.deque[list[Any]] = collections.deque()
        self._encoder = encoder
        self._log = log  # the processor's: its log lines
        self._dropped = 0  # spans dropped since the last warning

    def __len__(self) -> int:
        return len(self.ended) + len(self.entries)

    def add(self, span: ReadableSpan) -> None:
        """Keep `span` until `encode`; a full queue drops its oldest span first."""
        if len(self.ended) + len(self.entries) >= self.max_size:
            if self.entries:
                self._pop(1)
            else:
                self.ended.popleft()
            self._drop()
        self.ended.append(span)

    def encode(self) -> None:
        """Encode every span ended since the last call into its entry."""
        ended = self.ended
        runs = self._runs
        append = self.entries.append
        entry = self._encoder.entry
        while ended:
            span = ended.popleft()
            try:
                append(entry(span))
            except Exception as error:  # as the SDK's exporter reports a batch: only this span
                self._log.error("Failed to encode span batch: %s", error)
                continue
            resource = span.resource
            scope = span.instrumentation_scope or None
            last = runs[-1] if runs else None
            if last is not None and last[0] is resource and last[1] is scope:
                last[2] += 1
            else:
                runs.append([resource, scope, 1])

    def full(self) -> bool:
        """Whether a batch of encoded spans is waiting."""
        return len(self.entries) >= self.batch_size

    def take(self) -> tuple[list[Run], int]:
        """The oldest batch of encoded spans, in runs, and its size (saying first how many
        spans a full queue dropped)."""
        if self._dropped:
            self._log.warning(
                "spans dropped: the span queue was full", extra={"spans": self._dropped}
            )
            self._dropped = 0
        size = min(self.batch_size, len(self.entries))
        return self._pop(size), size

    def requeue(self, batch: list[Run]) -> None:
        """Put back a batch whose export never started, ahead of the spans queued since."""
        room = self.max_size - len(self)
        skip = sum(len(entries) for _, _, entries in batch) - max(room, 0)
        if skip > 0:  # the oldest go, counted at the next batch taken
            self._dropped += skip
        kept: list[Run] = []
        for resource, scope, entries in batch:
            if skip >= len(entries):
                skip -= len(entries)
                continue
            if skip > 0:
                entries, skip = entries[skip:], 0
            kept.append((resource, scope, entries))
        for resource, scope, entries in reversed(kept):  # each in front of what is queued
            self.entries.extendleft(reversed(entries))
            self._runs.appendleft([resource, scope, len(entries)])

    def _pop(self, count: int) -> list[Run]:
        """The `count` oldest entries, in their runs."""
        entries = self.entries
        runs = self._runs
        popleft = entries.popleft
        taken: list[Run] = []
        while count:
            run = runs[0]
            size = min(run[2], count)
            if size == len(entries):
                part = list(entries)
                entries.clear()
            else:
                part = [popleft() for _ in range(size)]
            taken.append((run[0], run[1], part))
            count -= size
            if size == run[2]:
                runs.popleft()
            else:
                run[2] -= size
        return taken

    def _drop(self) -> None:
        self._dropped += 1
        if self._dropped == 1:
            self._log.warning(
                "span queue full: the oldest spans are dropped until an export makes room",
                extra={"max_queue_size": self.max_size},
            )
