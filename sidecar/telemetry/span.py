"""One span of the sidecar: the `opentelemetry.trace.Span` API over plain fields.

What the SDK's `Span` keeps under two locks, in `BoundedAttributes` and in bounded event
and link lists, this keeps in slots and a dict; the values are stored as the SDK's
cleaning would store them (sequences of plain values become tuples, a re-set key moves
to the end), and anything else, or a span limit that could bite, goes through the
SDK's own `BoundedAttributes` (`Spans.bounded`). A span is touched on the event
loop's thread only: no lock. At `end` its `Spans` hands the processors the
`ReadableSpan`. Misuse (ending twice, setting after the end) is warned about as the
SDK warns, under its logger.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping, Sequence
from time import time_ns
from typing import TYPE_CHECKING, Final

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, SpanLimits
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.util import types

if TYPE_CHECKING:
    from sidecar.telemetry.spans import Spans

_log = logging.getLogger("opentelemetry.sdk.trace")
_UNSET: Final = Status(StatusCode.UNSET)
# Values the SDK's cleaning keeps as they are (with no length limit in force).
_PLAIN: Final = frozenset({str, int, float, bool, bytes, type(None)})
# The store of a recording span whose sampler's attributes are still set aside: shared and
# never written to (every write, and the end, stores them first, in a dict of the span's own).
UNSTORED: Final[dict[str, types.AnyValue]] = {}


def _plain_sequence(value: Sequence[object]) -> bool:
    return _PLAIN.issuperset(map(type, value))


class SidecarSpan(trace.Span):
    """One span of the sidecar: `opentelemetry.trace.Span` over plain fields (see module)."""

    __slots__ = (
        "_attributes", "_caller", "_context", "_end", "_events", "_hex", "_kind", "_links",
        "_name", "_parent", "_pending", "_spans", "_start", "_status",
    )  # fmt: skip

    def __init__(
        self,
        spans: Spans,
        name: str,
        kind: SpanKind,
        context: SpanContext,
        parent: SpanContext | None,
        caller: Context,
    ) -> None:
        self._spans = spans
        self._name = name
        self._kind = kind
        self._context = context
        self._parent = parent
        self._caller = caller  # the Context a child's sampler sees this span in
        # None: not recording (dropped by the sampler, or no processor to see it).
        self._attributes: dict[str, types.AnyValue] | BoundedAttributes | None = None
        # A recording span's sampler attributes until stored (`store_pending`): not on the
        # way to the request the span names.
        self._pending: Mapping[str, types.AnyValue] | None = None
        self._status = _UNSET
        self._start = 0
        self._end: int | None = None
        self._events: BoundedList[Event] | None = None
        self._links: BoundedList[Link] | None = None
        self._hex: tuple[str, str] | None = None

    def __repr__(self) -> str:
        return f'{type(self).__name__}(name="{self._name}", context={self._context})'

    def get_span_context(self) -> SpanContext:
        return self._context

    def ids(self) -> tuple[str, str]:
        """Trace and span id in hex, as logs and `traceparent` carry them; formatted once."""
        ids = self._hex
        if ids is None:
            context = self._context
            ids = self._hex = (f"{context.trace_id:032x}", f"{context.span_id:016x}")
        return ids

    def is_recording(self) -> bool:
        return self._end is None and self._attributes is not None

    def _writable(self, what: str) -> bool:
        if self._attributes is None:
            return False
        if self._end is not None:
            _log.warning("Tried calling %s on an ended span.", what)
            return False
        return True

    @property
    def pending(self) -> bool:
        """Whether the sampler's start attributes are still set aside (`store_pending`)."""
        return self._pending is not None

    def store_pending(self) -> None:
        """Store the sampler's attributes set aside at the start, as `set_attributes` would
        have then; no effect once done. Runs at the span's first write or end at the latest."""
        pending = self._pending
        if pending is not None:
            self._pending = None
            self._attributes = {}
            if pending:
                self.set_attributes(pending)

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        store = self._attributes
        if (
            type(store) is dict
            and self._pending is None
            and self._end is None
            and type(value) in _PLAIN
            and type(key) is str
            and key
            and len(store) < self._spans.room
        ):
            if key in store:
                del store[key]
            store[key] = value
        else:
            self.set_attributes({key: value})

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        """Kept as the SDK keeps them: re-set keys move to the end, sequences become tuples."""
        store = self._attributes
        if store is None:
            return
        if self._end is not None:
            _log.warning("Setting attribute on ended span.")
            return
        if self._pending is not None:
            self.store_pending()
            store = self._attributes
            assert store is not None
        if type(store) is dict and len(store) + len(attributes) <= self._spans.room:
            for key, value in attributes.items():
                kind = type(value)
                if kind not in _PLAIN:
                    if (kind is list or kind is tuple) and _plain_sequence(value):  # type: ignore[arg-type]
                        value = tuple(value)  # type: ignore[arg-type]
                    else:
                        break  # something the SDK's cleaning must see
                if type(key) is not str or not key:
                    break
                if key in store:
                    del store[key]
                store[key] = value
            else:
                return
            store = self._attributes = self._spans.bounded(store)
        elif type(store) is dict:
            store = self._attributes = self._spans.bounded(store)
        store.update(attributes)

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        if not self._writable("_add_event"):
            return
        limits = self._spans.limits
        if self._events is None:
            self._events = BoundedList(limits.max_events)
        bounded = _frozen(limits.max_event_attributes, attributes, limits)
        self._events.append(Event(name=name, attributes=bounded, timestamp=timestamp))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if not (context and (context.is_valid or (attributes or context.trace_state))):
            return  # what the SDK ignores
        if not self._writable("_add_link"):
            return
        limits = self._spans.limits
        if self._links is None:
            self._links = BoundedList(limits.max_links)
        self._links.append(Link(context, _frozen(limits.max_link_attributes, attributes, limits)))

    def update_name(self, name: str) -> None:
        if self._writable("update_name"):
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if not self._writable("set_status"):
            return
        # As the SDK: OK is final, UNSET is never set.
        if self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            if status.status_code is StatusCode.UNSET:
                return
            if description is not None:
                _log.warning(
                    "Description %s ignored. Use either `Status` or `(StatusCode, Description)`",
                    description,
                )
            self._status = status
        elif status is not StatusCode.UNSET:
            self._status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        module, name = type(exception).__module__, type(exception).__qualname__
        recorded: dict[str, types.AnyValue] = {
            "exception.type": f"{module}.{name}" if module and module != "builtins" else name,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            recorded.update(attributes)
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time: int | None = None) -> None:
        attributes = self._attributes
        if attributes is None:
            return
        if self._end is not None:
            _log.warning("Calling end() on an ended span.")
            return
        if self._pending is not None:
            self.store_pending()
            attributes = self._attributes
            assert attributes is not None
        self._end = end_time if end_time is not None else time_ns()
        self._spans.ended(self, attributes)


def _frozen(
    most: int | None, attributes: types.Attributes, limits: SpanLimits
) -> BoundedAttributes:
    """An event's or link's attributes as the SDK keeps them: bounded and immutable."""
    return BoundedAttributes(
        most, attributes, max_value_len=limits.max_attribute_length, immutable=True
    )
