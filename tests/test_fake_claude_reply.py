"""What the fake answers: the usage a stream's message_delta carries."""

from __future__ import annotations

import json

import aiohttp

from sidecar.fake_claude import FakeServer


async def test_message_delta_carries_the_whole_usage_as_the_api_sends_it(fake: FakeServer) -> None:
    """The API's `message_delta` usage is cumulative and names the input tokens too (some
    clients read the input count from it alone); it equals the non-streaming usage."""
    request = {"model": "claude-sonnet-5-5", "max_tokens": 64,
               "messages": [{"role": "user", "content": "count me in, please"}]}  # fmt: skip
    async with aiohttp.ClientSession() as http:
        async with http.post(fake.url + "/v1/messages", json=request) as response:
            whole = (await response.json())["usage"]
        async with http.post(
            fake.url + "/v1/messages", json={**request, "stream": True}
        ) as response:
            blocks = (await response.text()).split("\n\n")
    (delta,) = [block for block in blocks if block.startswith("event: message_delta")]
    usage = json.loads(delta.split("data: ", 1)[1])["usage"]
    assert usage == whole
    assert usage["input_tokens"] == 5
    assert usage["output_tokens"] == 12
