"""The fake's HTTP surface: the API's error statuses, the headers every Messages API
answer carries."""

from __future__ import annotations

import datetime
from typing import Any

import aiohttp
import anthropic
import pytest

from sidecar.fake_claude import FakeServer

_KINDS = ("requests", "tokens", "input-tokens", "output-tokens")


def _limits(headers: Any) -> dict[str, tuple[int, int, datetime.datetime]]:
    """{kind: (limit, remaining, reset)} from the `anthropic-ratelimit-*` headers."""
    found = {}
    for kind in _KINDS:
        prefix = "anthropic-ratelimit-" + kind
        reset = datetime.datetime.strptime(headers[prefix + "-reset"], "%Y-%m-%dT%H:%M:%S%z")
        found[kind] = (int(headers[prefix + "-limit"]), int(headers[prefix + "-remaining"]), reset)
    return found


@pytest.mark.parametrize(
    ("path", "extra"),
    [("/v1/messages", {}), ("/v1/messages", {"stream": True}),
     ("/v1/messages/count_tokens", {})],
)  # fmt: skip
async def test_messages_answers_carry_the_ratelimit_headers(
    fake: FakeServer, path: str, extra: dict[str, Any]
) -> None:
    """As the API's: every limit, one request spent, resets in RFC 3339 in the future."""
    body = {"model": "claude-sonnet-5-5", "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}], **extra}  # fmt: skip
    async with aiohttp.ClientSession() as http:
        async with http.post(fake.url + path, json=body) as response:
            assert response.status == 200
            await response.read()
            limits = _limits(response.headers)
            assert response.headers["request-id"].startswith("req_")
    now = datetime.datetime.now(datetime.UTC)
    for kind, (limit, remaining, reset) in limits.items():
        assert remaining == (limit - 1 if kind == "requests" else limit) > 0
        assert reset > now


async def test_a_rate_limit_error_shows_the_spent_tokens_and_resets_after_retry_after(
    fake: FakeServer,
) -> None:
    body = {"model": "claude-sonnet-5-5", "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi [[fake fault=rate_limit retry_after=7]]"}]}  # fmt: skip
    async with aiohttp.ClientSession() as http:
        async with http.post(fake.url + "/v1/messages", json=body) as response:
            assert response.status == 429
            assert (await response.json())["error"]["type"] == "rate_limit_error"
            limits = _limits(response.headers)
            assert response.headers["retry-after"] == "7"
    assert limits["input-tokens"][1] == limits["tokens"][1] == 0
    assert limits["requests"][1] > 0
    now = datetime.datetime.now(datetime.UTC)
    assert now < limits["tokens"][2] <= now + datetime.timedelta(seconds=9)


@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/claude-opus-5-5"])
async def test_the_models_api_has_no_ratelimit_headers(fake: FakeServer, path: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(fake.url + path) as response:
            assert response.status == 200
            assert not [name for name in response.headers if "ratelimit" in name.lower()]
            assert response.headers["request-id"].startswith("req_")


@pytest.mark.parametrize(
    ("fault", "status", "error_type", "exception"),
    [("bad_request", 400, "invalid_request_error", anthropic.BadRequestError),
     ("auth", 401, "authentication_error", anthropic.AuthenticationError),
     ("permission", 403, "permission_error", anthropic.PermissionDeniedError),
     ("not_found", 404, "not_found_error", anthropic.NotFoundError),
     ("rate_limit", 429, "rate_limit_error", anthropic.RateLimitError),
     ("server_error", 500, "api_error", anthropic.InternalServerError),
     ("timeout", 504, "timeout_error", anthropic.GatewayTimeoutError),
     ("overloaded", 529, "overloaded_error", anthropic.OverloadedError)],
)  # fmt: skip
async def test_each_error_fault_is_the_apis_error_as_the_sdk_raises_it(
    fake: FakeServer, fault: str, status: int, error_type: str, exception: type[Exception]
) -> None:
    """Every status of the API's error table the fake can be asked for, in its shape: the
    official SDK raises its class for it, with the body's `request_id` in `request-id`."""
    client = anthropic.AsyncAnthropic(base_url=fake.url, api_key="k", max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as raised:
        await client.messages.create(
            model="claude-sonnet-5-5", max_tokens=8,
            messages=[{"role": "user", "content": f"hi [[fake fault={fault}]]"}],
        )  # fmt: skip
    error = raised.value
    assert type(error) is exception
    assert error.status_code == status
    assert isinstance(error.body, dict)
    assert set(error.body) == {"type", "error", "request_id"}
    assert error.body["type"] == "error"
    assert error.body["error"]["type"] == error_type
    assert error.body["request_id"] == error.response.headers["request-id"] == error.request_id
    if fault == "not_found":  # as the API's: the model it does not know
        assert error.body["error"]["message"] == "model: claude-sonnet-5-5"
