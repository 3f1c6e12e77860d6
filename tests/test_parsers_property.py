"""Property tests over real sockets: no body, query string or header makes the sidecar answer 5xx.

One sidecar (optional auth, JWT + API key, CORS, deny rules) and one fake Claude run on a
background event loop for the whole module; hypothesis drives requests at them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from yarl import URL

from sidecar.fake_claude import FakeSettings, running_fake_claude
from tests.support.policy import (
    API_KEY,
    API_KEY_SHA256,
    AUDIENCE,
    ISSUER,
    SECRET,
    mint,
    new_key,
    write_public_key,
)
from tests.support.sidecars import running_sidecar

T = TypeVar("T")
PROMPT = "/api/stream-response"
PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Target:
    """A sidecar and its fake Claude on a loop in another thread, driven synchronously."""

    def __init__(self, public_key_file: Path) -> None:
        self.public_key_file = public_key_file
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._stack = contextlib.AsyncExitStack()
        self.url = ""
        self.http: aiohttp.ClientSession | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    async def start(self) -> None:
        fake = await self._stack.enter_async_context(running_fake_claude(FakeSettings(tokens=3)))
        config = {
            "claude": {"base_url": fake.url, "api_key": "sk-sidecar", "max_retries": 0},
            "auth": {
                "mode": "optional",
                "jwt": {"secret": SECRET, "public_key_file": str(self.public_key_file),
                        "algorithms": ["HS256", "RS256", "ES256", "EdDSA"], "issuer": ISSUER,
                        "audience": AUDIENCE, "tenant_claim": "org",
                        "query_param": "access_token"},
                "api_keys": [{"name": "k", "sha256": API_KEY_SHA256}],
            },
            "cors": {"allow_origins": ["https://app.example.com"]},
            "screening": {"max_prompt_chars": 2000, "deny_patterns": ["(?i)forbidden", "(x+x+)+y"]},
            "server": {"max_body_bytes": 65536},
        }  # fmt: skip
        sidecar = await self._stack.enter_async_context(running_sidecar(config))
        self.url = sidecar.url
        self.http = await self._stack.enter_async_context(aiohttp.ClientSession())

    async def request(
        self, method: str, url: str | URL, *, data: bytes | None = None, headers: Any = None
    ) -> int:
        assert self.http is not None
        async with self.http.request(method, url, data=data, headers=headers) as response:
            await response.read()
            return response.status

    def close(self) -> None:
        self.run(self._stack.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    key_dir = tmp_path_factory.mktemp("keys")
    running = Target(write_public_key(new_key("RS256"), key_dir))
    running.run(running.start())
    try:
        yield running
    finally:
        running.close()


# --------------------------------------------------------------------------- strategies

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
texts = st.one_of(
    st.text(max_size=60), st.sampled_from(["forbidden words", "x" * 500, "[[fake tokens=2]]"])
)
blocks = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image", "tool_result", "tool_use", "document", "x"])},
    optional={"text": texts | json_values, "content": json_values | texts,
              "source": st.fixed_dictionaries({}, optional={"data": texts | json_values}),
              "input": json_values},
)  # fmt: skip
contents = texts | st.lists(blocks | json_values, max_size=3) | json_values
messages = st.lists(
    st.fixed_dictionaries(
        {}, optional={"role": st.sampled_from(["user", "assistant", "system", ""]) | json_values,
                      "content": contents}),
    max_size=3,
) | json_values  # fmt: skip
prompt_bodies = st.fixed_dictionaries(
    {},
    optional={"prompt": texts | json_values, "model": st.sampled_from(["claude-sonnet-5-5", ""])
              | json_values, "max_tokens": st.integers(-5, 10**12) | json_values,
              "system": contents, "messages": messages, "extra": json_values},
)  # fmt: skip
anthropic_bodies = st.fixed_dictionaries(
    {},
    optional={"model": st.sampled_from(["claude-sonnet-5-5"]) | json_values,
              "max_tokens": st.integers(-5, 64) | json_values, "messages": messages,
              "system": contents, "stream": st.booleans() | json_values,
              "temperature": json_values, "top_k": json_values, "stop_sequences": json_values},
)  # fmt: skip
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=80,
)


def _segment(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


tokens = st.one_of(
    header_text,
    st.builds(
        lambda h, p, s: f"{_segment(h)}.{_segment(p)}.{s}", json_values, json_values, header_text
    ),
    st.builds(
        lambda alg, kid: f"{_segment({'alg': alg, 'kid': kid})}.{_segment({'sub': 'a'})}.sig",
        st.sampled_from(["none", "HS256", "RS256", "ES256", "EdDSA", "HS512", "PS256"]),
        st.none() | st.text(max_size=5) | json_values,
    ),
    st.builds(lambda sub: mint(sub=sub), json_values),  # validly signed, odd user claims
    st.just(API_KEY),
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "Authorization": st.builds(lambda t: "Bearer " + t, tokens) | header_text,
        "x-api-key": tokens,
        "Origin": st.sampled_from(["https://app.example.com", "null", "http://evil"]) | header_text,
        "X-Request-Id": header_text,
        "traceparent": header_text,
        "Content-Type": st.sampled_from(["application/json", "text/plain", ""]) | header_text,
        "X-Forwarded-For": header_text,
        "X-Sidecar-User": header_text,
    },
)


def json_body(value: Any) -> bytes:
    return json.dumps(value).encode()


# --------------------------------------------------------------------------- properties


@PROPERTY
@given(body=prompt_bodies, sent=headers)
def test_prompt_post_bodies_never_5xx(target: Target, body: Any, sent: dict[str, str]) -> None:
    sent = {"Content-Type": "application/json", **sent}
    status = target.run(
        target.request("POST", target.url + PROMPT, data=json_body(body), headers=sent)
    )
    assert status < 500


@PROPERTY
@given(
    raw=st.binary(max_size=300)
    | st.builds(json_body, json_values)
    | st.integers(1, 30000).map(lambda depth: b"[" * depth + b"]" * depth),  # nesting bombs
    path=st.sampled_from([PROMPT, "/v1/messages", "/v1/messages/count_tokens"]),
    sent=headers,
)
@example(raw=b"[" * 5000, path=PROMPT, sent={"Content-Type": "application/json"})
@example(raw=b'{"messages": ' + b"[" * 5000, path="/v1/messages", sent={})
@example(raw=b'"\\ud800"', path=PROMPT, sent={"Content-Type": "application/json"})
def test_raw_bodies_never_5xx(target: Target, raw: bytes, path: str, sent: dict[str, str]) -> None:
    status = target.run(target.request("POST", target.url + path, data=raw, headers=sent))
    assert status < 500


@PROPERTY
@given(
    params=st.dictionaries(
        st.sampled_from(["prompt", "model", "max_tokens", "system", "messages", "access_token",
                         "x"]) | st.text(max_size=8),
        st.text(max_size=40) | tokens,
        max_size=5,
    ),
    raw_suffix=st.sampled_from(["", "&%ff%fe", "&prompt=%00", "&&&=", "&prompt", "&%"]),
    sent=headers,
)  # fmt: skip
def test_prompt_query_strings_never_5xx(
    target: Target, params: dict[str, str], raw_suffix: str, sent: dict[str, str]
) -> None:
    url = URL(target.url + PROMPT).with_query(params)
    raw = URL(str(url) + ("?" if not url.query_string else "") + raw_suffix, encoded=True)
    status = target.run(target.request("GET", raw, headers=sent))
    assert status < 500


@PROPERTY
@given(
    body=anthropic_bodies | json_values,
    path=st.sampled_from(["/v1/messages", "/v1/messages/count_tokens", "/v1/messages/"]),
    method=st.sampled_from(["POST", "GET", "PUT", "OPTIONS"]),
    sent=headers,
)
def test_anthropic_bodies_never_5xx(
    target: Target, body: Any, path: str, method: str, sent: dict[str, str]
) -> None:
    status = target.run(target.request(method, target.url + path, data=json_body(body),
                                       headers=sent))  # fmt: skip
    assert status < 500


@PROPERTY
@given(
    origin=header_text,
    method=header_text,
    asked=header_text,
    path=st.sampled_from([PROMPT, "/v1/messages", "/nowhere", "/"]),
)
def test_preflight_headers_never_5xx(
    target: Target, origin: str, method: str, asked: str, path: str
) -> None:
    sent = {"Origin": origin, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": asked}  # fmt: skip
    status = target.run(target.request("OPTIONS", target.url + path, headers=sent))
    assert status < 500


@PROPERTY
@given(token=tokens, where=st.sampled_from(["bearer", "x-api-key", "query"]))
@example(token=f"{_segment({'alg': 'ES256'})}.{_segment({'sub': 'a'})}.sig", where="bearer")
@example(token=f"{_segment({'alg': 'EdDSA'})}.{_segment({'sub': 'a'})}.c2ln", where="query")
@example(token=f"{_segment({'alg': 'RS256', 'kid': [1]})}.{_segment({})}.sig", where="x-api-key")
@example(token="\udcff\xff.a.b", where="bearer")
def test_credentials_never_5xx(target: Target, token: str, where: str) -> None:
    url = URL(target.url + PROMPT)
    sent: dict[str, str] = {}
    if where == "bearer":
        sent["Authorization"] = "Bearer " + token
    elif where == "x-api-key":
        sent["x-api-key"] = token
    url = url.with_query({"prompt": "hi", **({"access_token": token} if where == "query" else {})})
    status = target.run(target.request("GET", url, headers=sent))
    assert status < 500
