"""What telemetry counts outside a stream: each kind of rejection and queue wait apart."""

from __future__ import annotations

from tests.support.otel import make_otel


def test_rejection_and_queue_sets_count_each_kind_apart() -> None:
    otel = make_otel()
    kinds = [
        ("quota_requests", "/v1", 429),
        ("queue_full", "/v1", 503),
        ("quota_requests", "/v2", 429),
    ]
    for index in range(30):
        otel.telemetry.rejected(*kinds[index % 3], request_id=f"r{index}")
        otel.telemetry.queue_wait(0.001 * index, admitted=index % 2 == 0)
    counts = {
        frozenset(point.attributes.items()): point.value
        for point in otel.points("sidecar.rejections")
    }
    assert counts == {
        frozenset({"sidecar.rejection.reason": reason, "http.route": route,
                   "http.response.status_code": status}.items()): 10
        for reason, route, status in kinds
    }  # fmt: skip
    waits = {point.attributes["sidecar.queue.admitted"]: point.count
             for point in otel.points("sidecar.queue.wait")}  # fmt: skip
    assert waits == {True: 15, False: 15}
