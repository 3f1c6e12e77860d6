"""A finished stream's shared attribute sets export what sets built per stream do: the same
metric points, value for value, with one entry per kind of stream; the numbers of its log
line derived from its record (durations, rate, cost), with no rate where nothing was generated."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.record import StreamRecord
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


# --------------------------------------------------------------------------- log line numbers


def test_a_finished_calls_log_numbers_are_derived_from_its_record() -> None:
    record = StreamRecord(request_id="r", route="/v1", started=10.0)
    record.first_token_at, record.last_chunk_at = 10.25, 12.25  # 2 s generating
    record.output_tokens, record.input_tokens, record.cache_read_input_tokens = 50, 7, 3
    record.queue_wait, record.retries, record.outcome = 0.0125, 1, "completed"
    fields = streams.log_fields("stream_complete", {"request_id": "r"}, record, 12.5, 0.123456789)
    assert fields["event"] == "stream_complete"
    assert fields["request_id"] == "r"
    assert fields["input_tokens"] == 10  # uncached + cache reads + cache writes
    assert fields["ttft_ms"] == 250.0
    assert fields["duration_ms"] == 2500.0
    assert fields["tokens_per_second"] == 25.0
    assert fields["queue_wait_ms"] == 12.5
    assert fields["cost_usd"] == 0.12345679  # rounded to 8 places


@pytest.mark.parametrize(
    ("first_token", "last_chunk"),
    [(None, None), (None, 10.5), (10.5, None), (10.5, 10.5)],
    ids=["nothing_came", "no_content_delta", "no_chunk_after", "zero_generating_time"],
)
def test_a_call_without_generating_time_has_no_rate_and_no_division_by_zero(
    first_token: float | None, last_chunk: float | None
) -> None:
    record = StreamRecord(request_id="r", route="/v1", started=10.0, output_tokens=5)
    record.first_token_at, record.last_chunk_at = first_token, last_chunk
    fields = streams.log_fields("stream_error", {}, record, 10.0, None)
    assert fields["tokens_per_second"] is None
    assert fields["ttft_ms"] == (500.0 if first_token is not None else None)
    assert fields["duration_ms"] == 0.0  # ended as it started
    assert fields["cost_usd"] is None  # no price known
