"""Convention names: old GenAI names by default, the latest on opt-in; HTTP server conventions.

Real streams through a sidecar and the fake Claude; spans and metrics read back from the
SDK's in-memory exporter and reader, under both settings of OTEL_SEMCONV_STABILITY_OPT_IN.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import aiohttp
import pytest
from opentelemetry.trace import SpanKind, StatusCode

from sidecar.telemetry import semconv
from sidecar.telemetry.semconv import (
    DEFAULT,
    LATEST,
    MAX_SERVER_ADDRESS,
    NO_ROUTE,
    gen_ai_names,
    http_method,
    protocol_version,
    server_address,
    server_duration_attributes,
    server_span_name,
)
from tests.support.otel import Otel, make_otel
from tests.support.sidecars import SidecarFactory, running_sidecar
from tests.support.waiting import eventually

OLD_METRICS = {
    "gen_ai.client.token.usage",
    "gen_ai.client.operation.duration",
    "gen_ai.client.operation.time_to_first_chunk",
    "gen_ai.client.operation.time_per_output_chunk",
}
NEW_METRICS = {
    "gen_ai.client.inference.duration",
    "gen_ai.client.inference.time_to_first_chunk",
    "gen_ai.client.inference.time_per_output_chunk",
    "gen_ai.client.inference.usage.input_tokens",
    "gen_ai.client.inference.usage.output_tokens",
    "gen_ai.client.inference.usage.cache_read.input_tokens",
    "gen_ai.client.inference.usage.cache_write.input_tokens",
}
# The HTTP conventions' bucket advice for `http.server.request.duration` (copied from the
# spec, not from the code under test).
HTTP_DURATION_BUCKETS = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0
]  # fmt: skip
# Names that do not change between the two versions.
COMMON_METRICS = {"gen_ai.server.time_to_first_token", "gen_ai.server.time_per_output_token"}


def test_opt_in_is_a_comma_separated_list() -> None:
    assert gen_ai_names({}) is DEFAULT
    assert gen_ai_names({"OTEL_SEMCONV_STABILITY_OPT_IN": "http"}) is DEFAULT
    opt_in = {"OTEL_SEMCONV_STABILITY_OPT_IN": "http, gen_ai_latest_experimental"}
    assert gen_ai_names(opt_in) is LATEST


def test_unknown_http_methods_are_bounded() -> None:
    assert http_method("GET") == "GET"
    assert http_method("PROPFIND") == "_OTHER"
    assert http_method("get") == "_OTHER"  # methods are case-sensitive


async def stream(url: str, prompt: str) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/api/stream-response", json={"prompt": prompt}) as response:
            await response.read()
            return response.status


async def streamed(sidecar_for: SidecarFactory, otel: Otel, *prompts: str) -> list[int]:
    """The status of each prompt, once every Claude call's span has ended."""
    async with sidecar_for(telemetry=otel.telemetry) as sidecar:
        statuses = [await stream(sidecar.url, prompt) for prompt in prompts]

    async def all_ended() -> bool:
        return len(otel.spans(SpanKind.CLIENT)) == len(prompts)

    await eventually(all_ended)
    return statuses


def values_by(points: list[Any], attribute: str) -> dict[Any, float]:
    return {point.attributes.get(attribute): point.value for point in points}


async def test_default_names_are_the_old_ones(
    sidecar_for: SidecarFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_SEMCONV_STABILITY_OPT_IN", raising=False)
    otel = make_otel()
    assert await streamed(sidecar_for, otel, "hello [[fake tokens=5]]") == [200]
    names = set(otel.metrics())
    assert names >= OLD_METRICS | COMMON_METRICS
    assert not names & NEW_METRICS
    (span,) = otel.spans(SpanKind.CLIENT)
    assert span.attributes is not None
    assert span.attributes["gen_ai.usage.cache_creation.input_tokens"] == 0
    assert "gen_ai.usage.cache_write.input_tokens" not in span.attributes
    assert span.attributes["gen_ai.usage.output_tokens"] == 5


async def test_opt_in_emits_the_latest_names_only(
    sidecar_for: SidecarFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    otel = make_otel()
    statuses = await streamed(
        sidecar_for, otel, "hello [[fake tokens=5]]", "more [[fake tokens=7]]",
        "fail [[fake fault=bad_request]]",
    )  # fmt: skip
    assert statuses == [200, 200, 400]
    names = set(otel.metrics())
    assert names >= NEW_METRICS | COMMON_METRICS
    assert not names & OLD_METRICS
    spans = otel.spans(SpanKind.CLIENT)
    for span in spans:
        assert span.attributes is not None
        assert span.name == "chat claude-sonnet-5-5"
        assert "gen_ai.usage.cache_creation.input_tokens" not in span.attributes
        # Usage on the calls Claude answered; the refused one reported none.
        answered = "error.type" not in span.attributes
        assert ("gen_ai.usage.cache_write.input_tokens" in span.attributes) == answered

    # Usage counters are sums over calls, by modality; the failed call counts 0 as unknown.
    output = otel.points("gen_ai.client.inference.usage.output_tokens")
    assert values_by(output, "gen_ai.token.modality") == {"text": 12, "unknown": 0}
    for point in output:
        assert point.attributes["gen_ai.provider.name"] == "anthropic"
        assert point.attributes["gen_ai.operation.name"] == "chat"
        assert "error.type" not in point.attributes
    inputs = otel.points("gen_ai.client.inference.usage.input_tokens")
    assert {p.attributes["gen_ai.token.modality"] for p in inputs} == {"unknown"}
    assert sum(p.value for p in inputs) > 0
    assert (
        sum(p.value for p in otel.points("gen_ai.client.inference.usage.cache_write.input_tokens"))
        == 0
    )
    # The duration histogram keeps error.type on the failed call, as the spec asks.
    durations = otel.points("gen_ai.client.inference.duration")
    assert sum(p.count for p in durations) == 3
    assert {p.attributes.get("error.type") for p in durations} == {None, "invalid_request_error"}
    ttfc = otel.points("gen_ai.client.inference.time_to_first_chunk")
    assert sum(p.count for p in ttfc) == 2
    assert list(ttfc[0].explicit_bounds)[:3] == [0.01, 0.02, 0.04]


async def test_http_server_conventions(
    sidecar_for: SidecarFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    otel = make_otel()
    async with sidecar_for(telemetry=otel.telemetry) as sidecar:
        assert await stream(sidecar.url, "hi [[fake tokens=2]]") == 200
        async with aiohttp.ClientSession() as http:
            async with http.request("PROPFIND", sidecar.url + "/api/stream-response?x=1") as r:
                assert r.status == 405

    async def both_ended() -> bool:
        return len(otel.spans(SpanKind.SERVER)) == 2

    await eventually(both_ended)
    propfind, post = sorted(
        otel.spans(SpanKind.SERVER), key=lambda span: str(span.name)
    )  # "HTTP ..." < "POST ..."
    assert post.name == "POST /api/stream-response"
    assert post.attributes is not None
    assert post.attributes["url.path"] == "/api/stream-response"
    assert post.attributes["url.scheme"] == "http"
    assert post.attributes["http.route"] == "/api/stream-response"
    # A method outside the known set is bounded, the client's spelling kept on the span only.
    assert propfind.name == "HTTP /api/stream-response"
    assert propfind.attributes is not None
    assert propfind.attributes["http.request.method"] == "_OTHER"
    assert propfind.attributes["http.request.method_original"] == "PROPFIND"
    assert propfind.attributes["url.path"] == "/api/stream-response"  # no query string

    durations = otel.points("http.server.request.duration")
    methods = {p.attributes["http.request.method"] for p in durations}
    assert methods == {"POST", "_OTHER"}
    assert {p.attributes["url.scheme"] for p in durations} == {"http"}
    streams = otel.points("sidecar.streams")
    assert {p.attributes["sidecar.route"] for p in streams} == {"/api/stream-response"}


async def test_a_request_no_route_matched_has_no_http_route(
    sidecar_for: SidecarFactory,
) -> None:
    """The HTTP conventions' `http.route` is a matched route: a path no route matches gets
    a span named for its method alone (`HTTP` for an unknown one) and no `http.route` on
    the span or on its `http.server.request.duration` point."""
    otel = make_otel()
    config = {"routes": [{"path": "/api/stream-response", "handler": "prompt"}]}
    async with sidecar_for(config, telemetry=otel.telemetry) as sidecar:
        async with aiohttp.ClientSession() as http:
            for method in ("GET", "PROPFIND"):
                async with http.request(method, sidecar.url + "/nothing/here") as r:
                    assert r.status == 404

    async def both_ended() -> bool:
        return len(otel.spans(SpanKind.SERVER)) == 2

    await eventually(both_ended)
    spans = {span.name: span.attributes or {} for span in otel.spans(SpanKind.SERVER)}
    assert set(spans) == {"GET", "HTTP"}
    for attributes in spans.values():
        assert "http.route" not in attributes
        assert attributes["url.path"] == "/nothing/here"
        assert attributes["sidecar.rejection.reason"] == "no_route"
    points = otel.points("http.server.request.duration")
    assert {p.attributes["http.request.method"] for p in points} == {"GET", "_OTHER"}
    for point in points:
        assert "http.route" not in point.attributes
        assert point.attributes["http.response.status_code"] == 404


def test_server_span_name_and_duration_attributes_by_route() -> None:
    assert server_span_name("POST", "/v1/") == "POST /v1/"
    assert server_span_name("PROPFIND", "/v1/") == "HTTP /v1/"
    assert server_span_name("GET", NO_ROUTE) == "GET"
    assert server_span_name("PROPFIND", NO_ROUTE) == "HTTP"
    assert server_duration_attributes("GET", "http", "/v1/", 200)["http.route"] == "/v1/"
    assert "http.route" not in server_duration_attributes("GET", "http", NO_ROUTE, 404)


async def test_builtin_fake_has_a_stable_server_address() -> None:
    """Its port is new on every start: spans and metrics name it the same way each time."""
    seen = []
    for _ in range(2):
        otel = make_otel()
        async with running_sidecar({"claude": {"base_url": "builtin:fake"}},
                                   telemetry=otel.telemetry) as sidecar:  # fmt: skip
            assert await stream(sidecar.url, "hi [[fake tokens=2]]") == 200

        async def ended(otel: Otel = otel) -> bool:
            return len(otel.spans(SpanKind.CLIENT)) == 1

        await eventually(ended)
        (span,) = otel.spans(SpanKind.CLIENT)
        assert span.attributes is not None
        (point,) = otel.points("sidecar.streams")
        seen.append((span.attributes["server.address"], span.attributes["server.port"],
                     point.attributes["server.address"], point.attributes["server.port"]))  # fmt: skip
    assert seen == [("builtin-fake", 0, "builtin-fake", 0)] * 2


async def test_http_server_duration_follows_the_http_conventions(
    sidecar_for: SidecarFactory,
) -> None:
    """Its buckets are the HTTP conventions' advice; a 5xx carries `error.type`, a 4xx none."""
    otel = make_otel()
    statuses = await streamed(
        sidecar_for, otel, "ok [[fake tokens=2]]", "x [[fake fault=server_error]]",
        "x [[fake fault=bad_request]]",
    )  # fmt: skip
    assert statuses == [200, 500, 400]
    points = otel.points("http.server.request.duration")
    by_status = {p.attributes["http.response.status_code"]: p for p in points}
    assert set(by_status) == {200, 500, 400}
    assert by_status[500].attributes["error.type"] == "500"
    assert "error.type" not in by_status[400].attributes
    assert "error.type" not in by_status[200].attributes
    for point in points:
        assert list(point.explicit_bounds) == HTTP_DURATION_BUCKETS
    # The server span agrees: a 5xx is the server's error, a 4xx the client's.
    server = {span.attributes["http.response.status_code"]: span  # type: ignore[index]
              for span in otel.spans(SpanKind.SERVER)}  # fmt: skip
    assert server[500].attributes is not None
    assert server[500].attributes["error.type"] == "500"
    assert server[500].status.status_code is StatusCode.ERROR
    assert server[400].status.status_code is StatusCode.UNSET


async def test_spans_and_metrics_name_the_sidecars_scope_and_version(
    sidecar_for: SidecarFactory,
) -> None:
    otel = make_otel()
    assert await streamed(sidecar_for, otel, "ok [[fake tokens=2]]") == [200]
    own = version("claude-sidecar")
    assert own
    for span in otel.spans():
        assert span.instrumentation_scope is not None
        assert (span.instrumentation_scope.name, span.instrumentation_scope.version) == (
            "claude-sidecar", own,
        )  # fmt: skip
    data = otel.reader.get_metrics_data()
    assert data is not None
    scopes = {(scope.scope.name, scope.scope.version)
              for resource in data.resource_metrics for scope in resource.scope_metrics}  # fmt: skip
    assert scopes == {("claude-sidecar", own)}


@pytest.mark.parametrize(
    ("version", "expected"), [((1, 1), "1.1"), ((1, 0), "1.0"), ((2, 0), "2"), ((3, 0), "3")]
)
def test_protocol_version_as_the_conventions_spell_it(
    version: tuple[int, int], expected: str
) -> None:
    assert protocol_version(version) == expected


@pytest.mark.parametrize(
    ("host", "scheme", "expected"),
    [
        ("front.example", "http", ("front.example", 80)),
        ("front.example", "https", ("front.example", 443)),
        ("front.example:8443", "http", ("front.example", 8443)),
        ("[::1]:9000", "http", ("::1", 9000)),
        ("[::1]", "https", ("::1", 443)),
        ("host:99999", "http", ("host", 80)),  # no port: the scheme's
        ("host:x", "http", ("host", 80)),
        ("a" * 400 + ":1", "http", ("a" * MAX_SERVER_ADDRESS, 1)),  # bounded: client-chosen
    ],
)
def test_server_address_and_port_from_the_host_header(
    host: str, scheme: str, expected: tuple[str, int]
) -> None:
    assert server_address(host, scheme) == expected


def test_server_addresses_are_remembered_within_a_bound() -> None:
    """Asked again, the same answer; however many `Host` names clients send, the memory of
    them stays bounded (each name is the client's choice)."""
    assert server_address("again.example:81", "http") == ("again.example", 81)
    assert server_address("again.example:81", "http") == ("again.example", 81)
    for n in range(3 * semconv._ADDRESSES_LIMIT):
        assert server_address(f"h{n}.example", "https") == (f"h{n}.example", 443)
    assert 0 < len(semconv._ADDRESSES) <= semconv._ADDRESSES_LIMIT
