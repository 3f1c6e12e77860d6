"""Estimated cost of a call from the configured per-model price table (USD per million tokens)."""

from __future__ import annotations

from sidecar.config import ModelPrice
from sidecar.record import StreamRecord


def price_for(prices: dict[str, ModelPrice], model: str) -> ModelPrice | None:
    """The price of `model`, or of the longest configured prefix (dated model ids)."""
    if model in prices:
        return prices[model]
    matches = [name for name in prices if model.startswith(name)]
    return prices[max(matches, key=len)] if matches else None


def cost_usd(price: ModelPrice, record: StreamRecord) -> float:
    return (
        record.input_tokens * price.input
        + record.output_tokens * price.output
        + record.cache_creation_input_tokens * price.cache_write
        + record.cache_read_input_tokens * price.cache_read
    ) / 1_000_000
