"""Cost in USD from the price table: per token kind, longest model-name prefix, the counter."""

from __future__ import annotations

import pytest

from sidecar.config import ModelPrice
from sidecar.record import StreamRecord
from sidecar.telemetry.cost import cost_usd, price_for
from tests.support.otel import make_otel, prompt
from tests.support.sidecars import SidecarFactory


async def test_cost_counter_follows_the_price_table(sidecar_for: SidecarFactory) -> None:
    otel = make_otel(prices={"claude-sonnet-5": {"input": 3, "output": 15}})
    async with sidecar_for(telemetry=otel.telemetry) as sidecar:
        status, events = await prompt(sidecar.url, "price me [[fake tokens=9]]")
    assert status == 200
    usage = events[-1]["usage"]
    expected = (usage["input_tokens"] * 3 + usage["output_tokens"] * 15) / 1_000_000
    (point,) = otel.points("sidecar.cost.usd")
    assert point.value == pytest.approx(expected)
    assert dict(point.attributes) == {"gen_ai.request.model": "claude-sonnet-5-5"}


def test_cost_of_cache_tokens_and_longest_prefix() -> None:
    prices = {
        "claude-sonnet": ModelPrice(input=1, output=1),
        "claude-sonnet-5-5": ModelPrice(input=3, output=15, cache_write=3.75, cache_read=0.3),
    }
    price = price_for(prices, "claude-sonnet-5-5-20261001")
    assert price is prices["claude-sonnet-5-5"]
    assert price_for(prices, "claude-opus-5-5") is None
    record = StreamRecord(request_id="r", route="/", started=0.0)
    record.input_tokens, record.output_tokens = 1_000_000, 2_000_000
    record.cache_creation_input_tokens, record.cache_read_input_tokens = 1_000_000, 10_000_000
    assert cost_usd(price, record) == pytest.approx(3 + 30 + 3.75 + 3)
