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
        decision = getattr(sampler, "_decision", None)  # the SDK's field: read, never set
        return decision if isinstance(decision, Decision) else None
    if should_sample is TraceIdRatioBased.should_sample:
        bound = getattr(sampler, "bound", None)
        return bound if type(bound) is int else None
    return None


# `ParentBased`'s delegates, in `Plan`'s order after the root (the SDK's fields).
_DELEGATES: Final = (
    "_root",
    "_remote_parent_sampled",
    "_remote_parent_not_sampled",
    "_local_parent_sampled",
    "_local_parent_not_sampled",
)


def plan_of(sampler: Sampler) -> Plan | None:
    """The sampler's decisions by parent, or None for one that must be asked per span
    (also should the SDK's samplers keep their settings elsewhere one day:
    `tests/test_sampling.py` fails then, the sidecar goes on asking)."""
    rule = _rule(sampler)
    if rule is not None:
        return (rule, rule, rule, rule, rule)
    if type(sampler).should_sample is not ParentBased.should_sample:
        return None
    rules: list[Rule] = []
    for name in _DELEGATES:
        delegate = getattr(sampler, name, None)
        found = _rule(delegate) if isinstance(delegate, Sampler) else None
        if found is None:
            return None
        rules.append(found)
    return (rules[0], rules[1], rules[2], rules[3], rules[4])
