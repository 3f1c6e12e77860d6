"""A finished stream's shared attribute sets export what sets built per stream do: the same
metric points, value for value, with one entry per kind of stream."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.telemetry import streams
from tests.support.otel import Otel, make_otel
from tests.support.stream_records import VARIED, finish_all, finished_record


def _exported(otel: Otel) -> dict[str, list[tuple[Any, ...]]]:
    """Every metric point: attributes and values (bucket counts, sums, min/max)."""
    exported: dict[str, list[tuple[Any, ...]]] = {}
    for name, metric in otel.metrics().items():
        exported[name] = sorted(
            (
                sorted((point.attributes or {}).items()),
                getattr(point, "value", None),
                getattr(point, "count", None),
                getattr(point, "sum", None),
                tuple(getattr(point, "bucket_counts", ())),
                getattr(point, "min", None),
                getattr(point, "max", None),
            )
            for point in metric.data.data_points
        )
    return exported


@pytest.mark.parametrize("latest", [False, True])
def test_shared_attribute_sets_export_what_sets_built_per_stream_do(
    monkeypatch: pytest.MonkeyPatch, latest: bool
) -> None:
    """Streams alike share their points' attribute sets; every point is as if each stream
    had built its own (the same calls, interleaved and repeated, recorded both ways)."""
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    if latest:
        monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    calls = [(index, VARIED[index % len(VARIED)]) for index in range(3 * len(VARIED))]
    shared, fresh = make_otel(), make_otel()
    finish_all(shared.telemetry, [finished_record(index, **fields) for index, fields in calls])
    for index, fields in calls:  # the path without memos: sets built for this stream alone
        record = finished_record(index, **fields)
        telemetry = fresh.telemetry
        record.model_label = telemetry.models(record.request_model)
        record.response_model_label = (
            telemetry.models(record.response_model) if record.response_model else None
        )
        record.error_label = telemetry.errors(record.error_type)
        streams.record_metrics(telemetry.instruments, record, record.ended or 0.0)
    exported, expected = _exported(shared), _exported(fresh)
    for name in ("sidecar.cost.usd", "sidecar.streams.active", "sidecar.queue.wait"):
        exported.pop(name, None)  # recorded only on the full path
    assert exported == expected
    assert len(exported) >= 6  # the comparison is not vacuous
    # One entry per kind of stream: a non-streaming call's points carry the same sets.
    assert shared.telemetry.memo_sizes()["stream_sets"] == len(VARIED) - 1
