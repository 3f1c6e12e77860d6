"""SSE framing: boundaries across reads, all three line endings, parsing, encoding."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.trace import SpanKind

from sidecar.identity import ANONYMOUS
from sidecar.sse import (
    MAX_EVENT_BYTES,
    EventScanner,
    EventTooLarge,
    encode,
    event_name,
    parse_block,
)
from tests.support.claude_streams import STREAM
from tests.support.otel import make_otel
from tests.support.scripted_claude import (
    MODEL,
    SSE_HEAD,
    START,
    Script,
    chunk,
    claude_config,
    messages_body,
    scripted_claude,
)
from tests.support.sidecars import running_sidecar
from tests.support.waiting import eventually, holds


def names(blocks: list[bytes]) -> list[bytes]:
    return [event_name(block) for block in blocks]


def test_one_event_per_read() -> None:
    scanner = EventScanner()
    out = []
    for part in STREAM.split(b"\n\n")[:-1]:
        out += scanner.feed(part + b"\n\n")
    assert names(out) == [
        b"message_start",
        b"content_block_delta",
        b"ping",
        b"message_delta",
        b"message_stop",
    ]
    assert scanner.pending == b""


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=20))
def test_any_split_yields_the_same_events(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    pieces = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    scanner = EventScanner()
    out = [block for piece in pieces for block in scanner.feed(piece)]
    assert out == [block for block in STREAM.split(b"\n\n") if block]


def test_crlf_and_cr_line_endings_split_across_reads() -> None:
    crlf = STREAM.replace(b"\n", b"\r\n")
    scanner = EventScanner()
    out = [b for i in range(0, len(crlf), 7) for b in scanner.feed(crlf[i : i + 7])]
    assert len(out) == 5
    cr = STREAM.replace(b"\n", b"\r")
    scanner = EventScanner()
    out = [b for i in range(0, len(cr), 5) for b in scanner.feed(cr[i : i + 5])]
    assert names(out)[-1] == b"message_stop"
    assert len(out) == 5


def test_parse_block_multiline_data_comments_and_no_space() -> None:
    name, data = parse_block(b": comment\nevent:custom\ndata: a\ndata:b\nid: 7")
    assert (name, data) == (b"custom", b"a\nb")
    assert parse_block(b"data: x") == (b"message", b"x")


def test_encode() -> None:
    assert encode({"token": "é"}, event_id=3) == b'id: 3\ndata: {"token":"\\u00e9"}\n\n'
    assert encode({"a": 1}, event="e") == b'event: e\ndata: {"a":1}\n\n'


def test_reads_of_one_byte_and_of_a_lone_blank_line() -> None:
    """A one-byte read is never a whole event; a read that is only a blank line ends none."""
    scanner = EventScanner()
    assert [b for byte in b"data: 1\n\n" for b in scanner.feed(bytes([byte]))] == [b"data: 1"]
    assert scanner.feed(b"x") == []
    assert scanner.feed(b"\n\n") == [b"x"]
    assert scanner.feed(b"\n\n") == []
    assert scanner.pending == b""


STOP_HEAD = b"event: message_stop\n"
STOP_EVENT = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


def _last_block_after(carry: bytes, chunk: bytes) -> tuple[list[bytes], bytes]:
    scanner = EventScanner()
    scanner.feed(carry)
    return scanner.feed(chunk), scanner.pending


@pytest.mark.parametrize(
    ("carry", "chunk", "expected"),
    [
        (b"", STOP_EVENT, True),  # the stop event alone, at an event boundary
        (b"", b"event: ping\ndata: {}\n\n" + STOP_EVENT, True),
        (b"event: ping\ndata: {}\n\n", STOP_EVENT, True),
        (b"event: ping\ndata: {}\n", b"\n" + STOP_EVENT, False),  # a boundary split: cautious
        (b"event: ping\ndata: {}", STOP_EVENT, False),  # the same event as the carried bytes
        (b"event: ping\ndata: {}\n", b"\n\n" + STOP_EVENT, False),  # a run of blank lines
        (b"", b"event: ping\n\n\n" + STOP_EVENT, False),
        (b"", STOP_EVENT[:-1], False),  # not whole yet
        (b"", STOP_EVENT + b"\n", False),
        (b"", STOP_EVENT.replace(b"\n", b"\r\n"), False),  # line ends to normalise
        (b"", b"event: message_stopped\ndata: {}\n\n", False),
        (b"", STOP_EVENT + b"event: ping\ndata: {}\n\n", False),  # not the last event
        (b"", b"", False),
    ],
)
def test_ends_with_event_looks_ahead_of_the_scan(
    carry: bytes, chunk: bytes, expected: bool
) -> None:
    scanner = EventScanner()
    scanner.feed(carry)
    assert scanner.ends_with_event(chunk, STOP_HEAD) is expected
    blocks, pending = _last_block_after(carry, chunk)
    if expected:  # what the scan then finds: that event last, nothing left over
        assert blocks[-1].startswith(STOP_HEAD)
        assert event_name(blocks[-1]) == b"message_stop"
        assert pending == b""


@given(
    st.lists(
        st.sampled_from([b"event: ping\n", b"data: {}\n", b"\n", b"\r", b": c\n", STOP_HEAD]),
        max_size=12,
    ),
    st.integers(min_value=0, max_value=60),
)
def test_ends_with_event_never_promises_what_the_scan_does_not_find(
    parts: list[bytes], cut: int
) -> None:
    stream = b"".join(parts)
    carry, chunk = stream[:cut], stream[cut:]
    scanner = EventScanner()
    scanner.feed(carry)
    if scanner.ends_with_event(chunk, STOP_HEAD):
        blocks, pending = _last_block_after(carry, chunk)
        assert event_name(blocks[-1]) == b"message_stop"
        assert pending == b""


BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize(
    "framing",
    [
        lambda s: s,
        lambda s: s.replace(b"\n", b"\r\n"),
        lambda s: s.replace(b"\n", b"\r"),
    ],
    ids=["lf", "crlf", "cr"],
)
@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) + 40), max_size=12))
def test_a_byte_order_mark_before_the_first_event_is_dropped_at_any_split(
    framing: Callable[[bytes], bytes], cuts: list[int]
) -> None:
    """An `EventSource` drops a leading byte order mark; so does the scan, even when the mark
    is split across reads: the first event's name is still `message_start`."""
    stream = BOM + framing(STREAM)
    points = sorted({cut for cut in cuts if cut < len(stream)})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    scanner = EventScanner()
    out = [block for piece in pieces for block in scanner.feed(piece)]
    assert out == [block for block in STREAM.split(b"\n\n") if block]
    assert scanner.pending == b""


def test_only_a_leading_byte_order_mark_is_dropped() -> None:
    scanner = EventScanner()
    assert scanner.feed(b"\xef") == []
    assert scanner.feed(b"\xbbdata: 1\n\n") == [b"\xef\xbbdata: 1"]  # not a whole mark: kept
    scanner = EventScanner()
    assert scanner.feed(b"data: 1\n\n" + BOM + b"data: 2\n\n") == [b"data: 1", BOM + b"data: 2"]
    assert event_name(EventScanner().feed(BOM + STOP_EVENT)[0]) == b"message_stop"
    assert not EventScanner().ends_with_event(BOM + STOP_EVENT, STOP_HEAD)  # cautious


def test_an_empty_read_between_a_carriage_return_and_its_line_feed_ends_one_line() -> None:
    scanner = EventScanner()
    assert scanner.feed(b"data: 1\r") == []
    assert scanner.feed(b"") == []
    assert scanner.feed(b"\n") == []  # the \r's own \n: no blank line yet
    assert scanner.feed(b"data: 2\r\n\r\n") == [b"data: 1\ndata: 2"]


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"])
def test_an_event_longer_than_one_read_ends_at_any_boundary(line_end: bytes) -> None:
    """Reads of a long event are kept apart until its end comes, also when the blank line is
    split across the reads (its first line end ends one read, the second starts the next)."""
    event = b"event: content_block_delta" + line_end + b"data: " + b"x" * 100 + line_end
    for cut in range(len(event) - 40, len(event) + len(line_end)):
        stream = event + line_end + b"data: 2" + line_end + line_end
        scanner = EventScanner()
        out = [b for i in range(0, cut, 9) for b in scanner.feed(stream[i : min(i + 9, cut)])]
        out += scanner.feed(stream[cut:])
        assert out == [event.replace(b"\r\n", b"\n")[:-1], b"data: 2"], cut
        assert scanner.pending == b""


@pytest.mark.timeout(60)
def test_a_long_event_in_small_reads_costs_its_length_not_its_length_per_read() -> None:
    """A 32 MiB event (the longest kept) in 4 KiB reads: each read is searched once (the
    carried bytes are not copied and searched again per read, which would take minutes and
    stall the loop)."""
    size, read = MAX_EVENT_BYTES - 64, 4096
    event = b"event: content_block_delta\ndata: " + b"x" * size + b"\n\n"
    scanner = EventScanner()
    out = [b for i in range(0, len(event), read) for b in scanner.feed(event[i : i + read])]
    assert len(out) == 1
    assert len(out[0]) == len(event) - 2
    assert scanner.pending == b""


def test_an_event_kept_across_reads_past_the_limit_raises_and_lets_its_reads_go() -> None:
    """Up to the limit an event spanning reads is kept; one byte more raises, the reads
    kept are let go, and the scanner still knows an event was open (a passthrough stream
    then ends it before its error event)."""
    head = b"event: content_block_delta\ndata: "
    whole = head + b"x" * (100 - len(head))  # 100 bytes before the blank line
    scanner = EventScanner(limit=100)
    out = [b for i in range(0, len(whole), 7) for b in scanner.feed(whole[i : i + 7])]
    assert out == []
    assert scanner.feed(b"\n\nevent: ping\n\n") == [whole, b"event: ping"]  # at the limit
    scanner.feed(b"data: 1\n\n" + head)
    with pytest.raises(EventTooLarge):
        for _ in range(20):
            scanner.feed(b"x" * 7)
    assert scanner.in_event
    assert scanner.pending == head  # the read it started in; the later ones are let go


def test_an_event_within_one_read_is_not_measured() -> None:
    """The common path: an event that ends in the read it started in is never counted."""
    scanner = EventScanner(limit=10)
    assert scanner.feed(b"data: " + b"x" * 50 + b"\n\n") == [b"data: " + b"x" * 50]
    assert not scanner.in_event


def _event(name: str, data: dict[str, object]) -> bytes:
    return b"event: %b\ndata: %b\n\n" % (name.encode(), json.dumps(data).encode())


# Claude's answer as a proxy in between might reframe it: a byte order mark, `\r\n` line
# ends, comments; sent a byte per read, so reads split the mark, each `\r\n` pair and the
# multi-byte characters of the text.
ANSWER = (
    _event("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "model": MODEL, "usage": {"input_tokens": 25, "output_tokens": 1}}})
    + b": keepalive\n\n"
    + _event("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}})
    + _event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": "H\u00e9\U0001f389"}})
    + _event("content_block_stop", {"type": "content_block_stop", "index": 0})
    + _event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                               "usage": {"output_tokens": 42}})
    + _event("message_stop", {"type": "message_stop"})
)  # fmt: skip


async def _byte_per_chunk(writer: asyncio.StreamWriter) -> None:
    writer.write(SSE_HEAD)
    for byte in BOM + ANSWER.replace(b"\n", b"\r\n"):
        writer.write(chunk(bytes([byte])))
        await writer.drain()
    writer.write(b"0\r\n\r\n")


def _client_events(raw: bytes) -> list[tuple[str, str]]:
    """(event name, data) of each event a client's SSE parser dispatches."""
    events = []
    for block in raw.decode().split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        if data:
            events.append((name, "\n".join(data)))
    return events


async def test_a_reframed_answer_read_a_byte_at_a_time_reaches_every_route_whole() -> None:
    """A byte order mark, `\\r\\n` line ends and comments, every read one byte: the prompt
    route sends every token and settles Claude's real usage, the resumable Anthropic route
    sends each event under its own name (`message_start` first), the UI route starts."""
    script = [_byte_per_chunk] * 3
    async with (
        scripted_claude(*script) as url,
        running_sidecar(claude_config(url)) as sidecar,
        aiohttp.ClientSession() as http,
    ):
        async with http.post(sidecar.url + "/api/stream-response", json={"prompt": "hi"}) as r:
            prompt = [json.loads(data) for _, data in _client_events(await r.read())]
        headers = {"Sidecar-Resume": "on"}
        async with http.post(
            sidecar.url + "/v1/messages", json=messages_body(), headers=headers
        ) as r:
            assert r.headers.get("Sidecar-Stream-Id")
            anthropic = _client_events(await r.read())
        ui_body = {"id": "c", "messages": [{"id": "m", "role": "user",
                                            "parts": [{"type": "text", "text": "hi"}]}]}  # fmt: skip
        async with http.post(sidecar.url + "/api/chat", json=ui_body) as r:
            ui = [data for _, data in _client_events(await r.read())]
    assert "".join(e.get("token", "") for e in prompt) == "H\u00e9\U0001f389"
    assert prompt[-1] == {"done": True, "stop_reason": "end_turn", "usage": {
        "input_tokens": 25, "output_tokens": 42, "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0}}  # fmt: skip
    assert [name for name, _ in anthropic] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    assert json.loads(anthropic[0][1])["message"]["usage"]["input_tokens"] == 25
    assert [json.loads(d)["type"] for d in ui[:3]] == ["start", "start-step", "text-start"]
    assert json.loads(ui[3]) == {"type": "text-delta", "id": "0", "delta": "H\u00e9\U0001f389"}
    assert ui[-1] == "[DONE]"


@given(
    st.sampled_from([b"", BOM[:1], BOM[:2], BOM]),
    st.lists(
        st.sampled_from([b"event: ping\n", b"data: {}\n", b"\n", b"\r", b": c\n", STOP_HEAD]),
        max_size=12,
    ),
    st.lists(st.integers(min_value=0, max_value=70), min_size=1, max_size=4),
)
def test_ends_with_event_never_promises_what_the_scan_of_many_reads_does_not_find(
    mark: bytes, parts: list[bytes], cuts: list[int]
) -> None:
    """As above, after a (perhaps partial) byte order mark and with the bytes before the
    look fed in several reads (an event carried across them)."""
    stream = mark + b"".join(parts)
    points = sorted({min(cut, len(stream)) for cut in cuts})
    reads = [stream[a:b] for a, b in zip([0, *points], points, strict=False)]
    chunk = stream[points[-1] :]
    scanner, reference = EventScanner(), EventScanner()
    for read in reads:
        scanner.feed(read)
    if scanner.ends_with_event(chunk, STOP_HEAD):
        blocks = scanner.feed(chunk)
        assert event_name(blocks[-1]) == b"message_stop"
        assert scanner.pending == b""
        whole = reference.feed(stream)  # the same events as one read finds
        assert whole[-1] == blocks[-1]


@given(
    st.lists(
        st.sampled_from([b"data: x\n", b"data: \xc3\xa9\r\n", b"\n", b"\r", b"\r\n", b": c\n", BOM,
                         b"event: message_stop\r"]),
        max_size=16,
    ),
    st.lists(st.integers(min_value=0, max_value=120), max_size=8),
)  # fmt: skip
def test_any_reads_of_any_framing_find_what_one_read_finds(
    parts: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(parts)
    points = sorted({min(cut, len(stream)) for cut in cuts})
    reads = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    scanner, whole = EventScanner(), EventScanner()
    assert [block for read in reads for block in scanner.feed(read)] == whole.feed(stream)
    assert scanner.pending == whole.pending


_OPEN_DELTA = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"'
)


def _endless_event(go: asyncio.Event | None = None) -> Script:
    """Claude's `message_start`, then (once `go` is set) an event that never ends: 1 MiB
    reads past the scanner's limit, then a KiB at a time until the sidecar stops reading
    (bounded: after that the connection ends, as a cut stream's would)."""

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD + chunk(START) + chunk(_OPEN_DELTA))
        await writer.drain()
        if go is not None:
            await go.wait()
        mib = chunk(b"x" * (1 << 20))
        for _ in range((MAX_EVENT_BYTES >> 20) + 1):
            writer.write(mib)
            await writer.drain()
        for _ in range(200):
            writer.write(chunk(b"x" * 1024))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.close()

    return script


def _last_event(raw: bytes) -> tuple[str, str]:
    """(event name, data) of the last event a client's SSE parser dispatches (the UI
    stream's `[DONE]` aside)."""
    return [event for event in _client_events(raw) if event[1] != "[DONE]"][-1]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("route", ["anthropic", "resumable", "prompt", "ui", "cache follower"])
async def test_an_upstream_event_that_never_ends_ends_the_stream_as_a_broken_upstream(
    route: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Past `MAX_EVENT_BYTES` of one event without its end, the sidecar stops reading
    Claude and ends the stream with the route's error (a coalesced follower of the call
    too): outcome `upstream_error`, `error.type` `api_error`, the quota settled on what was
    seen (`message_start`: 5 input, 1 output), and no traceback."""
    otel = make_otel()
    go = asyncio.Event()
    path, body, headers = "/v1/messages", messages_body(), {}
    if route == "resumable":
        headers = {"Sidecar-Resume": "on"}
    elif route == "prompt":
        path, body = "/api/stream-response", {"prompt": "hi"}
    elif route == "ui":
        path = "/api/chat"
        body = {"id": "c", "messages": [{"id": "m", "role": "user",
                                         "parts": [{"type": "text", "text": "hi"}]}]}  # fmt: skip
    data = {
        **claude_config("http://unused"),
        "quotas": {"tokens_per_day": 100_000},
        "cache": {"enabled": route == "cache follower"},
    }
    body = {**body, "temperature": 0} if route == "cache follower" else body
    async with scripted_claude(_endless_event(go)) as url:
        data["claude"]["base_url"] = url
        async with (
            running_sidecar(data, telemetry=otel.telemetry) as sidecar,
            aiohttp.ClientSession() as http,
        ):
            async with http.post(sidecar.url + path, json=body, headers=headers) as leader:
                assert leader.status == 200
                follower = None
                if route == "cache follower":
                    cache = sidecar.runtime.cache
                    assert cache is not None
                    await eventually(lambda: holds(bool(cache.inflight)))
                    follower = await http.post(sidecar.url + path, json=body)
                    assert follower.headers["X-Cache"] == "HIT"  # replaying the call's chunks
                go.set()
                raw = await leader.read()
                if follower is not None:
                    followed = await follower.read()
                    follower.release()
            await otel.exporter.wait_for(lambda: bool(otel.spans(SpanKind.CLIENT)))
            served = sidecar.runtime.routes.resolve(path).route
            assert served is not None
            told = await sidecar.runtime.quotas.count_request(
                served.policy.quotas, served.policy.quota_scope, ANONYMOUS, "127.0.0.1"
            )
    name, event = _last_event(raw)
    if route in ("anthropic", "resumable", "cache follower"):
        assert name == "error"
        assert json.loads(event)["error"]["type"] == "api_error"
    elif route == "prompt":
        assert json.loads(event)["error"]["type"] == "upstream_error"
    else:
        assert json.loads(event)["type"] == "error"
        assert raw.endswith(b"data: [DONE]\n\n")
    assert "too large" in event
    if route == "cache follower":
        assert _last_event(followed) == (name, event)  # the follower ends as its call did
    failed = {"sidecar.stream.outcome": "upstream_error", "error.type": "api_error"}
    assert otel.count("sidecar.streams", **failed) == 1
    left = int(told["anthropic-ratelimit-tokens-remaining"])
    assert 100_000 - 6 <= left <= 100_000 - 6 + 60  # 5 in + 1 out (a day refills ~1/s)
    assert not [r for r in caplog.records if r.exc_info or r.levelname == "ERROR"]
