"""The SDK's own samplers, read once: their answer follows from their settings alone.

`always_on`, `always_off`, `traceidratio` and their `parentbased_*` forms (what
`OTEL_TRACES_SAMPLER` picks) decide from the parent's flags and the trace id only, and
hand the start attributes and the parent's trace state on unchanged. `plan_of` reads
such a sampler's decisions once, so a span's start needs no sampler call, no
`SamplingResult` and no context to carry its parent (`Spans._start`). Any other sampler
(a subclass that overrides `should_sample`, a vendor's) is asked per span, as the SDK
asks it. tests/test_spans.py holds spans started either way to the SDK's own.
"""

from __future__ import annotations

from typing import Final

from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    StaticSampler,
    TraceIdRatioBased,
)

# A decision, or the bound a trace id's low 64 bits must be under to be sampled.
Rule = Decision | int
# The rule for a span with no parent, then with a parent that is remote and sampled,
# remote and not sampled, local and sampled, local and not sampled (`ParentBased`'s order).
Plan = tuple[Rule, Rule, Rule, Rule, Rule]
RATIO_MASK: Final = TraceIdRatioBased.TRACE_ID_LIMIT


def _rule(sampler: Sampler) -> Rule | None:
    """The rule of a sampler that ignores its parent, if it is one of the SDK's."""
    should_sample = type(sampler).should_sample
    if should_sample is StaticSampler.should_sample:
        assert isinstance(sampler, StaticSampler)
        return sampler._decision
    if should_sample is TraceIdRatioBased.should_sample:
        assert isinstance(sampler, TraceIdRatioBased)
        return sampler.bound
    return None


def plan_of(sampler: Sampler) -> Plan | None:
    """The sampler's decisions by parent, or None for one that must be asked per span."""
    rule = _rule(sampler)
    if rule is not None:
        return (rule, rule, rule, rule, rule)
    if type(sampler).should_sample is not ParentBased.should_sample:
        return None
    assert isinstance(sampler, ParentBased)
    rules: list[Rule] = []
    for delegate in (
        sampler._root,
        sampler._remote_parent_sampled,
        sampler._remote_parent_not_sampled,
        sampler._local_parent_sampled,
        sampler._local_parent_not_sampled,
    ):
        rule = _rule(delegate)
        if rule is None:
            return None
        rules.append(rule)
    return (rules[0], rules[1], rules[2], rules[3], rules[4])
