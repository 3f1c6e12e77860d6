"""The fake's Message Batches API, read by the official SDK as the API's."""

from __future__ import annotations

import aiohttp
import anthropic
import pytest

from sidecar.fake_claude import FakeServer
from sidecar.fake_claude.batches import MAX_BATCHES, BatchError, BatchStore
from sidecar.fake_claude.knobs import FakeSettings
from tests.support.sdk import sdk, user

MODEL = "claude-sonnet-5-5"


def _request(custom_id: str, text: str = "hi", **params: object) -> dict[str, object]:
    return {
        "custom_id": custom_id,
        "params": {"model": MODEL, "max_tokens": 8, "messages": user(text), **params},
    }


def _accept(params: object) -> None:
    """A validator that refuses nothing."""


async def test_a_batch_ends_at_once_with_a_result_per_request(fake: FakeServer) -> None:
    async with sdk(fake.url) as client:
        batch = await client.messages.batches.create(
            requests=[_request("a"), _request("b", max_tokens=0)]  # type: ignore[list-item]
        )
        assert batch.processing_status == "ended"
        assert (batch.request_counts.succeeded, batch.request_counts.errored) == (1, 1)
        assert batch.results_url == f"{fake.url}/v1/messages/batches/{batch.id}/results"
        results = {
            r.custom_id: r.result async for r in await client.messages.batches.results(batch.id)
        }
        succeeded, errored = results["a"], results["b"]
        assert succeeded.type == "succeeded"
        assert succeeded.message.content
        assert errored.type == "errored"
        assert errored.error.error.type == "invalid_request_error"
        assert [b.id async for b in client.messages.batches.list()] == [batch.id]
        assert (await client.messages.batches.retrieve(batch.id)).id == batch.id
        assert (await client.messages.batches.cancel(batch.id)).processing_status == "ended"
        assert (await client.messages.batches.delete(batch.id)).type == "message_batch_deleted"
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.batches.retrieve(batch.id)


@pytest.mark.parametrize(
    "body",
    [{}, {"requests": []}, {"requests": [{"params": {}}]},
     {"requests": [_request("a"), _request("a")]}, ["not", "an", "object"]],
)  # fmt: skip
async def test_a_batch_the_api_refuses_whole_is_its_400(fake: FakeServer, body: object) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(fake.url + "/v1/messages/batches", json=body) as response:
            assert response.status == 400
            assert (await response.json())["error"]["type"] == "invalid_request_error"


def test_the_store_forgets_its_oldest_batches_past_its_bound() -> None:
    store = BatchStore()
    first = store.create({"requests": [_request("a")]}, "http://x", FakeSettings(), _accept)
    for _ in range(MAX_BATCHES):
        store.create({"requests": [_request("a")]}, "http://x", FakeSettings(), _accept)
    assert store.get(first["id"]) is None
    assert len(store.page()["data"]) == MAX_BATCHES
    with pytest.raises(BatchError):
        store.create({"requests": "nope"}, "http://x", FakeSettings(), _accept)
