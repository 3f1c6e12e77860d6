"""The SDK's samplers are read once; any other sampler is left to be asked per span."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_ON,
    Decision,
    ParentBased,
    SamplingResult,
    StaticSampler,
    TraceIdRatioBased,
    _get_from_env_or_default,
)
from opentelemetry.trace import Link, SpanKind, TraceState
from opentelemetry.util.types import Attributes

from sidecar.telemetry.sampling import RATIO_MASK, plan_of
from tests.support.spans import Asked

ON, OFF = Decision.RECORD_AND_SAMPLE, Decision.DROP
ENVIRONMENTS = {
    "parentbased_always_on": (ON, ON, OFF, ON, OFF),
    "always_on": (ON,) * 5,
    "always_off": (OFF,) * 5,
    "parentbased_always_off": (OFF, ON, OFF, ON, OFF),
}


@pytest.mark.parametrize("name", ENVIRONMENTS)
def test_the_samplers_the_environment_picks_are_read_once(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", name)
    assert plan_of(_get_from_env_or_default()) == ENVIRONMENTS[name]


@pytest.mark.parametrize("name", ["traceidratio", "parentbased_traceidratio"])
def test_a_ratio_is_read_as_the_bound_the_sdk_compares_trace_ids_with(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", name)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    plan = plan_of(_get_from_env_or_default())
    assert plan is not None
    bound = TraceIdRatioBased(0.25).bound
    assert plan[0] == bound
    for trace_id in (1, bound - 1, bound, RATIO_MASK, (7 << 64) | (bound - 1)):
        sdk = TraceIdRatioBased(0.25).should_sample(None, trace_id, "s").decision
        assert (ON if trace_id & RATIO_MASK < bound else OFF) is sdk


def test_the_parent_rules_are_each_delegates() -> None:
    sampler = ParentBased(
        ALWAYS_OFF,
        remote_parent_sampled=ALWAYS_OFF,
        remote_parent_not_sampled=StaticSampler(Decision.RECORD_ONLY),
        local_parent_sampled=ALWAYS_ON,
        local_parent_not_sampled=ALWAYS_ON,
    )
    assert plan_of(sampler) == (OFF, OFF, Decision.RECORD_ONLY, ON, ON)


class Custom(StaticSampler):
    """A static sampler of the operator's, whose answer is its own business."""

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        return SamplingResult(Decision.DROP if name == "secret" else Decision.RECORD_AND_SAMPLE)


def test_any_other_sampler_is_asked_per_span() -> None:
    assert plan_of(Custom(Decision.RECORD_AND_SAMPLE)) is None
    assert plan_of(Asked()) is None  # a ParentBased whose `should_sample` is its own
    assert plan_of(ParentBased(Custom(Decision.RECORD_AND_SAMPLE))) is None
    assert plan_of(ParentBased(ALWAYS_ON, local_parent_sampled=DEFAULT_ON)) is None


def test_a_sampler_whose_settings_cannot_be_read_is_asked_per_span() -> None:
    parent_based = ParentBased(ALWAYS_ON)
    del parent_based._local_parent_sampled  # as if the SDK kept it elsewhere
    static = StaticSampler(Decision.RECORD_AND_SAMPLE)
    del static._decision
    assert plan_of(parent_based) is None
    assert plan_of(static) is None
