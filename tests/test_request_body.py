"""Request bodies on the Claude routes: content codings, duplicate keys, slow bodies.

What is screened must be what Claude receives: a compressed body is decoded (within the
body limit) before screening and sent on decoded; a body whose JSON has a key twice is
refused, since parsers disagree on which copy wins.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.errors import Rejection
from sidecar.fake_claude import FakeServer
from sidecar.handlers.request_body import (
    decode_body,
    parse_json_object,
    parse_model,
    valid_max_tokens,
)
from tests.support.sidecars import SidecarFactory

PROMPT = "/api/stream-response"
MODEL = "claude-sonnet-5-5"
CONFIG: dict[str, Any] = {
    "screening": {"deny_patterns": [{"name": "launch-codes", "pattern": "(?i)launch codes"}]},
    "server": {"max_body_bytes": 65536},
}
ROUTE_BODIES: dict[str, dict[str, Any]] = {
    PROMPT: {"prompt": "hello"},
    "/v1/messages": {"model": MODEL, "max_tokens": 8,
                     "messages": [{"role": "user", "content": "hello"}]},
}  # fmt: skip


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def identity(data: bytes) -> bytes:
    return data


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "deflate-raw": raw_deflate,  # sent as "deflate", as many clients do
    "identity": identity,
}


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_decode_undoes_each_coding(name: str) -> None:
    data = json.dumps({"text": "hello " * 100}).encode()
    header = "deflate" if name == "deflate-raw" else name
    assert decode_body(ENCODERS[name](data), [header], 65536) == data


def test_decode_chains_multi_member_gzip_and_stacked_codings() -> None:
    assert decode_body(gzip.compress(b"ab") + gzip.compress(b"cd"), ["gzip"], 100) == b"abcd"
    stacked = zlib.compress(gzip.compress(b"inner"))  # gzip applied first, then deflate
    assert decode_body(stacked, ["gzip, deflate"], 100) == b"inner"
    assert decode_body(stacked, ["gzip", "deflate"], 100) == b"inner"


@pytest.mark.parametrize(
    ("raw", "encoding", "status", "reason"),
    [
        (b"\x00garbage\xff" * 10, "deflate", 400, "invalid_request"),
        (b"\x1f\x8b\x08garbage", "gzip", 400, "invalid_request"),
        (gzip.compress(b"x" * 1000)[:-12], "gzip", 400, "invalid_request"),  # cut short
        (gzip.compress(b"x") + b"trailing", "gzip", 400, "invalid_request"),
        (zlib.compress(b"a") + b"trailing", "deflate", 400, "invalid_request"),
        (gzip.compress(b"\0" * 5_000_000), "gzip", 413, "body_too_large"),  # 5 MB from ~5 kB
        (b"{}", "br", 415, "unsupported_encoding"),
        (b"{}", "compress", 415, "unsupported_encoding"),
    ],
    ids=["garbage_deflate", "garbage_gzip", "truncated", "gzip_trailing", "deflate_trailing",
         "bomb", "br", "compress"],
)  # fmt: skip
def test_undecodable_bodies_are_4xx(raw: bytes, encoding: str, status: int, reason: str) -> None:
    with pytest.raises(Rejection) as raised:
        decode_body(raw, [encoding], 65536)
    assert (raw_status := raised.value.status) == status, raw_status
    assert raised.value.reason == reason


async def _post(url: str, raw: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any], bytes]:
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        headers = {"Content-Type": "application/json", **headers}
        async with http.post(url, data=raw, headers=headers) as response:
            body = await response.read()
            data = json.loads(body) if response.content_type == "application/json" else {}
            return response.status, data, body


def _error(data: dict[str, Any], path: str) -> dict[str, Any]:
    """The error object in the route's own format (asserting the format)."""
    if path == PROMPT:
        assert set(data) == {"error"}
    else:
        assert data["type"] == "error"
    error: dict[str, Any] = data["error"]
    return error


@pytest.mark.parametrize("path", sorted(ROUTE_BODIES))
async def test_compressed_bodies_are_screened_and_sent_on_decoded(
    fake: FakeServer, sidecar_for: SidecarFactory, path: str
) -> None:
    body = ROUTE_BODIES[path]
    denied = json.loads(json.dumps(body).replace("hello", "the launch codes"))
    async with sidecar_for(CONFIG) as sidecar:
        url = sidecar.url + path
        ok = await _post(
            url, gzip.compress(json.dumps(body).encode()), {"Content-Encoding": "gzip"}
        )
        refused = await _post(
            url, zlib.compress(json.dumps(denied).encode()), {"Content-Encoding": "deflate"}
        )
        garbage = await _post(url, b"\x00not deflate\xff", {"Content-Encoding": "deflate"})
        brotli = await _post(url, b"\x8b\x02\x80{}\x03", {"Content-Encoding": "br"})
    assert ok[0] == 200
    assert refused[0] == 400
    assert _error(refused[1], path)["message"] == 'prompt matches deny rule "launch-codes"'
    assert garbage[0] == 400
    assert "Content-Encoding" in _error(garbage[1], path)["message"]
    assert brotli[0] == 415
    assert "not supported" in _error(brotli[1], path)["message"]
    for _status, _, raw in (refused, garbage, brotli):
        assert b"Traceback" not in raw
    assert fake.state.counters["requests"] == 1  # only the good one
    sent = fake.state.requests[-1]
    assert "content-encoding" not in sent.headers
    assert "hello" in json.dumps(sent.body)  # Claude got the JSON, not compressed bytes


@pytest.mark.parametrize("path", sorted(ROUTE_BODIES))
async def test_duplicate_keys_are_refused(
    fake: FakeServer, sidecar_for: SidecarFactory, path: str
) -> None:
    text = json.dumps(ROUTE_BODIES[path])
    top = text[:-1] + ', "model": "other"}' if path != PROMPT else text[:-1] + ', "prompt": "x"}'
    nested = text.replace('"content": "hello"', '"content": "hello", "content": "launch codes"')
    if path == PROMPT:
        nested = text[:-1] + ', "messages": [{"role": "user", "content": "a", "role": "user"}]}'
    async with sidecar_for(CONFIG) as sidecar:
        results = [await _post(sidecar.url + path, raw.encode(), {}) for raw in (top, nested)]
    for status, data, _ in results:
        assert status == 400
        assert _error(data, path)["message"].startswith("body has a duplicate key")
    assert fake.state.counters["requests"] == 0


@pytest.mark.parametrize("path", sorted(ROUTE_BODIES))
async def test_a_lone_surrogate_escape_is_refused_as_bad_json(
    fake: FakeServer, sidecar_for: SidecarFactory, path: str
) -> None:
    """`"\\ud800"` is valid JSON syntax but no text: a 400 in the route's format before
    screening, the cache or Claude, never a 500; a full pair is text and passes."""
    text = json.dumps(ROUTE_BODIES[path])
    field = '"prompt": "hello' if path == PROMPT else '"content": "hello'
    async with sidecar_for({**CONFIG, "cache": {"enabled": True}}) as sidecar:
        lone = [
            await _post(sidecar.url + path, raw.encode(), {})
            for raw in (
                text.replace(field, field + " \\ud800 there"),  # a high one
                text.replace(field, field + " \\uDC00"),  # a low one, upper case
                text[:-1] + ', "metadata": {"\\udbff": 1}}',  # in a key
            )
        ]
        paired = await _post(
            sidecar.url + path, text.replace(field, field + " \\ud83d\\ude00").encode(), {}
        )
    for status, data, raw in lone:
        assert status == 400
        assert "lone UTF-16 surrogate" in _error(data, path)["message"]
        assert b"Traceback" not in raw
    assert paired[0] == 200
    assert fake.state.counters["requests"] == 1  # the pair only
    assert "\U0001f600" in json.dumps(fake.state.requests[-1].body, ensure_ascii=False)


def test_an_escaped_backslash_before_u_d800_is_plain_text() -> None:
    """`"\\\\ud800"` is a backslash and `ud800`, no escape: it parses."""
    assert parse_json_object(b'{"a": "\\\\ud800"}') == {"a": "\\ud800"}


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_numbers_json_does_not_have_are_refused(number: str) -> None:
    """Python's decoder reads them, Claude does not: a 400 before quotas or Claude."""
    with pytest.raises(Rejection) as caught:
        parse_json_object(b'{"model": "m", "temperature": %b}' % number.encode())
    assert (caught.value.status, caught.value.reason) == (400, "invalid_request")
    assert "not a JSON number" in caught.value.message


def _objects() -> st.SearchStrategy[Any]:
    keys = st.text(alphabet="abc", min_size=1, max_size=2)
    leaves = st.none() | st.booleans() | st.integers() | st.text(max_size=5)
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
        max_leaves=12,
    )


@given(st.dictionaries(st.text(alphabet="abc", min_size=1, max_size=2), _objects(), min_size=1))
@settings(max_examples=200, deadline=None)
def test_any_object_parses_and_any_duplicated_key_is_refused(value: dict[str, Any]) -> None:
    text = json.dumps(value)
    assert parse_json_object(text.encode()) == value
    # The same key written twice in the outermost object (any value) is refused.
    key = json.dumps(next(iter(value)))
    with pytest.raises(Rejection, match="duplicate key"):
        parse_json_object(("{" + key + ": 1, " + text[1:]).encode())
    # And inside any nested object.
    for inner in (s for s in _nested_object_texts(text) if s != "{}"):
        first_key = inner[1:].split(":", 1)[0]
        doubled = text.replace(inner, "{" + first_key + ": 0, " + inner[1:], 1)
        with pytest.raises(Rejection, match="duplicate key"):
            parse_json_object(doubled.encode())


def _nested_object_texts(text: str) -> list[str]:
    """The JSON text of every object nested in `text` (not the outermost)."""
    found: list[str] = []

    def visit(value: Any, outer: bool) -> None:
        if isinstance(value, dict):
            if not outer:
                found.append(json.dumps(value))
            for inner in value.values():
                visit(inner, False)
        elif isinstance(value, list):
            for inner in value:
                visit(inner, False)

    visit(json.loads(text), True)
    return found


@pytest.mark.parametrize("path", sorted(ROUTE_BODIES))
async def test_a_trickled_body_gets_408(
    fake: FakeServer, sidecar_for: SidecarFactory, path: str
) -> None:
    config = {**CONFIG, "server": {"body_read_timeout_seconds": 0.5}}
    async with sidecar_for(config) as sidecar:
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        writer.write(
            b"POST %b HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{" % path.encode()
        )
        await writer.drain()

        async def trickle() -> None:
            for _ in range(100):  # one byte every 0.1 s: never quiet long, never done
                await asyncio.sleep(0.1)
                writer.write(b" ")
                await writer.drain()

        trickling = asyncio.create_task(trickle())
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        finally:
            trickling.cancel()
            writer.close()
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"Connection: close" in head
    assert fake.state.counters["requests"] == 0


@pytest.mark.parametrize("path", sorted(ROUTE_BODIES))
async def test_a_client_gone_before_the_call_never_reaches_claude(
    fake: FakeServer, sidecar_for: SidecarFactory, path: str
) -> None:
    raw = json.dumps(ROUTE_BODIES[path]).encode()
    async with sidecar_for(CONFIG) as sidecar:
        _, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        writer.write(
            b"POST %b HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (path.encode(), len(raw), raw)
        )
        writer.write_eof()  # the whole request, then half-closed at once
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.close()
        status, _, _ = await _post(sidecar.url + path, raw, {})  # a client that stays is served
    assert status == 200
    assert fake.state.counters["requests"] == 1


async def test_expect_100_continue_on_a_claude_route(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    raw = json.dumps(ROUTE_BODIES["/v1/messages"]).encode()
    async with sidecar_for(CONFIG) as sidecar:
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        writer.write(
            b"POST /v1/messages HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n" % len(raw)
        )
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.write(raw)
        await writer.drain()
        final = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert final.startswith(b"HTTP/1.1 200 ")
    assert "expect" not in fake.state.requests[-1].headers


@pytest.mark.parametrize("path", sorted(ROUTE_BODIES))
async def test_json_escapes_do_not_hide_a_phrase(
    fake: FakeServer, sidecar_for: SidecarFactory, path: str
) -> None:
    # Screening reads the decoded strings, as Claude does, not the raw bytes.
    raw = json.dumps(ROUTE_BODIES[path]).replace("hello", "\\u006c\\u0061unch\\u0020codes")
    async with sidecar_for(CONFIG) as sidecar:
        status, data, _ = await _post(sidecar.url + path, raw.encode(), {})
    assert status == 400
    assert _error(data, path)["message"] == 'prompt matches deny rule "launch-codes"'
    assert fake.state.counters["requests"] == 0


@pytest.mark.parametrize("path", sorted(ROUTE_BODIES))
@pytest.mark.parametrize("pieces", [1, 40], ids=["with-the-head", "trickled"])
async def test_a_chunked_body_over_the_limit_is_413(
    fake: FakeServer, sidecar_for: SidecarFactory, path: str, pieces: int
) -> None:
    # No Content-Length to refuse up front: the listener's read limit stops the body.
    raw = json.dumps({**ROUTE_BODIES[path], "padding": "x" * 70_000}).encode()
    step = -(-len(raw) // pieces)
    async with sidecar_for(CONFIG) as sidecar:
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        writer.write(
            b"POST %b HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" % path.encode()
        )
        for start in range(0, len(raw), step):
            piece = raw[start : start + step]
            writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            await writer.drain()
            if pieces > 1:
                await asyncio.sleep(0.005)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert _error(json.loads(body), path)["message"] == "request body exceeds 65536 bytes"
    assert fake.state.counters["requests"] == 0


@pytest.mark.parametrize(
    ("value", "valid"),
    [(1, True), (2**63 - 1, True), (0, False), (-1, False), (2**63, False), (True, False),
     (1.0, False), ("1", False), (None, False)],
)  # fmt: skip
def test_max_tokens_is_a_positive_int64(value: object, valid: bool) -> None:
    assert valid_max_tokens(value) is valid


@pytest.mark.parametrize("model", ["claude-sonnet-5-5 ", "claude sonnet", "claude\tx", "m" * 129])
def test_a_model_refused_is_told_what_a_model_may_hold(model: str) -> None:
    """A space is printable ASCII, yet refused: the message says what is taken."""
    with pytest.raises(Rejection) as refused:
        parse_model(model)
    assert refused.value.reason == "model_invalid"
    assert refused.value.message == (
        "model: must be at most 128 visible ASCII characters (no spaces or control characters)"
    )
    assert parse_model("claude-sonnet-5-5-20260101") == "claude-sonnet-5-5-20260101"
