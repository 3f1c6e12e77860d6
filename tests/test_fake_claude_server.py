"""The fake's HTTP surface: the API's error statuses, the headers every Messages API
answer carries."""

from __future__ import annotations

import datetime
from typing import Any

import aiohttp
import anthropic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.fake_claude import FakeServer
from sidecar.fake_claude.knobs import FakeSettings, KnobError, parse_directive, resolve_knobs
from sidecar.fake_claude.reply import (
    encode_events,
    estimate_input_tokens,
    last_user_text,
    message_json,
    plan_reply,
)
from sidecar.fake_claude.server import ApiError, _validate

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


_JSON_LEAF = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
)
_JSON = st.recursive(
    _JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
# A content block: the keys the fake reads, each holding any JSON value.
_BLOCK = st.dictionaries(
    st.sampled_from(["type", "text", "id", "tool_use_id", "thinking", "signature", "content",
                     "source", "input", "name"]),
    _JSON | st.sampled_from(["text", "tool_use", "tool_result", "thinking", "server_tool_use",
                             "web_search_tool_result", "image", "redacted_thinking"]),
    max_size=4,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "assistant"])},
            optional={"content": st.lists(_BLOCK | _JSON, max_size=3) | _JSON},
        ),
        min_size=1,
        max_size=3,
    ),
    st.dictionaries(
        st.sampled_from(["system", "tools", "thinking", "stop_sequences", "tool_choice", "stream"]),
        _JSON,
        max_size=3,
    ),
    st.booleans(),
)
def test_any_json_in_a_request_is_an_answer_or_the_apis_400_never_a_crash(
    messages: list[dict[str, Any]], extra: dict[str, Any], counting: bool
) -> None:
    """Whatever JSON values a request's blocks and fields hold (a list for a block's type,
    a number for an id), the fake answers it or refuses it with the API's 400: the path a
    request takes through it raises nothing else (it was a 500 with a traceback)."""
    body = {"model": "claude-sonnet-5-5", "max_tokens": 16, **extra, "messages": messages}
    refused: int | None = None
    try:
        _validate(body, counting)
        knobs = resolve_knobs(parse_directive(last_user_text(body)), FakeSettings(tokens=3))
    except ApiError as error:
        refused = error.status
    except KnobError:  # the fake's own directive: a 400 too (`_knobs`)
        refused = 400
    if refused is not None:
        assert refused == 400
        return
    estimate_input_tokens(body)
    reply = plan_reply(body, knobs, None)
    encode_events(reply)
    message_json(reply)
