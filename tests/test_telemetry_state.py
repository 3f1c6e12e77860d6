"""Telemetry's bounded memos give, per value, what computing it per call gives: each user
or tenant its own pseudonym, each model its own price, and no memo grows past its bound."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from opentelemetry import trace

from sidecar.config import ModelPrice
from sidecar.record import StreamRecord
from sidecar.telemetry.state import CACHE_LIMIT
from tests.support.otel import make_otel
from tests.support.stream_records import finish_all, finished_record


@pytest.mark.parametrize("mode", ["hashed", "plain", "none"])
def test_identity_memo_gives_each_value_its_own_and_stays_bounded(mode: str) -> None:
    telemetry = make_otel(user_attribute=mode).telemetry

    def expected(value: str) -> str | None:
        if mode == "none":
            return None
        return value if mode == "plain" else hashlib.sha256(value.encode()).hexdigest()[:16]

    users = [f"user-{index}" for index in range(CACHE_LIMIT + 50)]
    for user in [*users, *users[:10], *users[::97]]:  # evicted and repeated values too
        record = StreamRecord(request_id="r", route="/", started=0.0, user=user, tenant="acme")
        fields = telemetry.log_base(record, trace.INVALID_SPAN)
        assert fields.get("user") == expected(user)
        assert fields.get("tenant") == expected("acme")
        assert telemetry.memo_sizes()["identities"] <= CACHE_LIMIT
    anonymous = telemetry.log_base(StreamRecord("r", "/", 0.0), trace.INVALID_SPAN)
    assert "user" not in anonymous
    assert "tenant" not in anonymous


def test_with_a_user_hash_key_pseudonyms_are_its_hmac_and_the_same_on_every_replica() -> None:
    key = "shared-by-every-replica-" + "k" * 16
    replicas = [make_otel(user_hash_key=key).telemetry for _ in range(2)]
    other_key = make_otel(user_hash_key="another-key-" + "k" * 30).telemetry
    unkeyed = make_otel().telemetry
    record = StreamRecord(request_id="r", route="/", started=0.0, user="ann@example.com",
                          tenant="acme")  # fmt: skip

    def keyed(value: str) -> str:
        return hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()[:16]

    first, second = (replica.log_base(record, trace.INVALID_SPAN) for replica in replicas)
    assert first["user"] == second["user"] == keyed("ann@example.com")
    assert first["tenant"] == second["tenant"] == keyed("acme")
    assert other_key.log_base(record, trace.INVALID_SPAN)["user"] != first["user"]
    # Without a key: the plain SHA-256 a dictionary reverses (as before).
    plain = unkeyed.log_base(record, trace.INVALID_SPAN)
    assert plain["user"] == hashlib.sha256(b"ann@example.com").hexdigest()[:16] != first["user"]


def test_price_memo_costs_each_model_at_its_own_price_and_stays_bounded() -> None:
    prices = {
        "claude-sonnet-5-5": ModelPrice(input=3, output=15),
        "claude-haiku-5": ModelPrice(input=1, output=5),
    }
    otel = make_otel(prices=prices)
    models = ["claude-sonnet-5-5", "claude-haiku-5", "claude-sonnet-5-5-20260101", "unpriced"] * 3
    records = [
        finished_record(
            index,
            request_model=model,
            response_model=model,
            input_tokens=1_000_000,
            output_tokens=1_000_000,
        )
        for index, model in enumerate(models)
    ]
    finish_all(otel.telemetry, records)
    costs = {point.attributes["gen_ai.request.model"]: point.value
             for point in otel.points("sidecar.cost.usd")}  # fmt: skip
    # The dated id is priced by its prefix and labelled as itself (it extends a known name).
    assert costs == {
        "claude-sonnet-5-5": pytest.approx(3 * 18),
        "claude-haiku-5": pytest.approx(3 * 6),
        "claude-sonnet-5-5-20260101": pytest.approx(3 * 18),
    }
    for index in range(CACHE_LIMIT + 10):  # model names come from clients
        finish_all(otel.telemetry, [finished_record(index, request_model=f"client-{index}")])
        assert otel.telemetry.memo_sizes()["prices"] <= CACHE_LIMIT
    assert otel.telemetry.price("claude-haiku-5") is prices["claude-haiku-5"]
