"""The stream core's rules as tables: upstream chunks in, client bytes, usage and outcome out.

No sockets: each row feeds a scripted Claude stream (split at awkward places) and says
how it ends; the expectations are what the client receives and what is recorded.
"""

from __future__ import annotations

import json

import aiohttp
import pytest

from sidecar.handlers.anthropic import Passthrough
from sidecar.handlers.prompt import PromptTranslator
from sidecar.record import StreamRecord
from sidecar.stream.core import StopStream, StreamCore, Translator, ends_complete
from sidecar.stream.store import StreamLog


def event(name: str, data: dict[str, object]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


START = event("message_start", {"type": "message_start", "message": {
    "id": "msg_1", "model": "claude-sonnet-5-5", "usage": {"input_tokens": 11, "output_tokens": 1},
}})  # fmt: skip


def delta(text: str) -> bytes:
    return event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "text_delta", "text": text}})  # fmt: skip


END = event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                              "usage": {"output_tokens": 3}}) + event(
    "message_stop", {"type": "message_stop"}
)  # fmt: skip
ERROR = event("error", {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
WHOLE = START + delta("Hel") + delta("lo ") + delta("you") + END
CUT = START + delta("Hel") + delta("lo")[:20]  # ends mid-event


def record() -> StreamRecord:
    return StreamRecord(request_id="r", route="/", started=0.0)


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def run(
    translator: Translator, data: bytes, size: int, end: BaseException | None
) -> tuple[bytes, StreamRecord]:
    rec = record()
    core = StreamCore(rec, translator)
    out = b"".join(core.feed(piece) for piece in split(data, size))
    return out + core.end(end), rec


def prompt_events(out: bytes) -> list[dict[str, object]]:
    return [json.loads(line[6:]) for line in out.decode().split("\n") if line.startswith("data: ")]


LOST = aiohttp.ClientPayloadError("cut")
IDLE = StopStream("idle_timeout", "timeout_error", "no data from Claude for 30 s")
SHUTDOWN = StopStream("shutting_down", "overloaded_error", "the sidecar is shutting down")
STALLED = StopStream("client_stalled", "client_stalled", "the client accepted no data for 60 s")
DETACHED = StopStream("client_detached", "stream_abandoned", "no client came back")
CANCELLED = StopStream("client_cancelled", "cancelled", "the stream was cancelled")

# (upstream bytes, how the body ended, outcome, error type, last prompt event)
PROMPT_ROWS = [
    (WHOLE, None, "completed", None, {"done": True}),
    (
        WHOLE[:-40],
        None,
        "upstream_error",
        "api_error",
        {"error": "upstream_error"},
    ),  # no message_stop
    (CUT, LOST, "upstream_error", "api_error", {"error": "upstream_error"}),
    (
        START + delta("x") + ERROR,
        None,
        "upstream_error",
        "overloaded_error",
        {"error": "overloaded"},
    ),
    (
        START + delta("x") + ERROR,
        LOST,
        "upstream_error",
        "overloaded_error",
        {"error": "overloaded"},
    ),
    (START + delta("x"), IDLE, "idle_timeout", "timeout_error", {"error": "idle_timeout"}),
    (START + delta("x"), SHUTDOWN, "shutting_down", "overloaded_error", {"error": "shutting_down"}),
    (START + delta("x"), STALLED, "client_stalled", "client_stalled", {"error": "client_stalled"}),
    (START + delta("x"), DETACHED, "client_detached", None, {"error": "stream_abandoned"}),
    (START + delta("x"), CANCELLED, "client_cancelled", None, {"error": "cancelled"}),
]


@pytest.mark.parametrize("size", [1, 7, 64, 100000])
@pytest.mark.parametrize(("data", "end", "outcome", "error_type", "last"), PROMPT_ROWS)
def test_prompt_route_outcomes(
    data: bytes, end: BaseException | None, outcome: str, error_type: str | None,
    last: dict[str, object], size: int,
) -> None:  # fmt: skip
    log = StreamLog("S", "owner", max_bytes=1 << 20)  # a resumable stream's
    out, rec = run(PromptTranslator(capture=False, log=log), data, size, end)
    assert rec.outcome == outcome
    assert rec.error_type == error_type
    events = prompt_events(out)
    final = events[-1]
    if "done" in last:
        assert final["done"] is True
        assert final["usage"] == {"input_tokens": 11, "output_tokens": 3,
                                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}  # fmt: skip
        assert "".join(str(e["token"]) for e in events[:-1]) == "Hello you"
    else:
        assert final["error"]["type"] == last["error"]  # type: ignore[index]
        assert sum(1 for e in events if "error" in e) == 1  # one final error event, never two
    assert out.count(b"\n\n") == len(events)  # every event complete
    # Every event, the final one too, carries its id from the stream's log, in order.
    ids = [line for line in out.split(b"\n") if line.startswith(b"id: ")]
    assert ids == [b"id: S:%d" % n for n in range(1, len(events) + 1)]
    assert log.numbered == len(events)


@pytest.mark.parametrize("size", [1, 13, 100000])
@pytest.mark.parametrize(
    ("data", "end", "outcome", "tail"),
    [
        (WHOLE, None, "completed", b""),
        (CUT, LOST, "upstream_error", b"\n\nevent: error\n"),  # the cut event is ended first
        (START + ERROR, LOST, "upstream_error", b""),  # Claude's own error stays the last word
        (START, IDLE, "idle_timeout", b"event: error\n"),
    ],
)
def test_passthrough_relays_bytes_unchanged_and_ends_with_one_error(
    data: bytes, end: BaseException | None, outcome: str, tail: bytes, size: int
) -> None:
    out, rec = run(Passthrough(), data, size, end)
    assert out.startswith(data)  # Claude's bytes, untouched
    assert rec.outcome == outcome
    rest = out[len(data) :]
    assert rest.startswith(tail)
    assert (b"event: error" in rest) == bool(tail)


@pytest.mark.parametrize(
    ("end", "known"),
    [(None, True), (LOST, True), (SHUTDOWN, True), (STALLED, True), (CANCELLED, True),
     (IDLE, False)],
)  # fmt: skip
def test_the_end_of_claudes_body_is_known_unless_an_idle_timeout_ended_it(
    end: BaseException | None, known: bool
) -> None:
    """`last_chunk_at` (chunk gaps, generation rate) is when Claude's body ended; an idle
    timeout ends it long after its last bytes, which came at a time not kept."""
    _, rec = run(PromptTranslator(capture=False), START + delta("x") + delta("y"), 7, end)
    assert (rec.last_chunk_at is not None) is known


def test_usage_and_timing_are_recorded_as_the_chunks_pass() -> None:
    rec = record()
    core = StreamCore(rec, PromptTranslator(capture=False))
    core.feed(START)
    assert rec.first_chunk_at is not None
    assert rec.first_token_at is None
    assert rec.input_tokens == 11
    assert rec.response_id == "msg_1"
    core.feed(delta("a") + delta("b"))
    assert rec.output_deltas == 2
    assert rec.first_token_at is not None
    assert rec.chunks == 2
    core.feed(END)
    assert rec.stop_reason == "end_turn"
    assert rec.output_tokens == 3
    assert core.end(None).startswith(b'id: 3\ndata: {"done":true')


def test_an_outcome_decided_elsewhere_is_kept_and_nothing_more_is_sent() -> None:
    rec = record()
    core = StreamCore(rec, PromptTranslator(capture=False))
    core.feed(START + delta("x"))
    rec.outcome = "client_cancelled"
    assert core.end(LOST) == b""
    assert rec.outcome == "client_cancelled"


def test_mid_event_is_known_so_heartbeats_never_split_an_event() -> None:
    core = StreamCore(record(), Passthrough())
    core.feed(START[:10])
    assert core.mid_event
    core.feed(START[10:])
    assert not core.mid_event


@pytest.mark.parametrize(
    ("body", "complete"),
    [(START + delta("a") + END, True), (START + delta("a"), False)],
    ids=["ends-with-message-stop", "ended-early"],
)
def test_a_whole_passthrough_answer_known_complete_before_its_scan_adds_nothing(
    body: bytes, complete: bool
) -> None:
    rec = record()
    core = StreamCore(rec, Passthrough())
    assert ends_complete(body) is complete
    core.arrived()  # read now: the time to first chunk is taken before the scan
    arrived = rec.first_chunk_at
    assert arrived is not None
    core.observe(body)
    assert rec.first_chunk_at == arrived
    assert rec.chunks == 1
    assert rec.input_tokens == 11  # accounted for after, all the same
    final = core.end(None)
    assert (final == b"") is complete  # what `ends_complete` promised: nothing to add
    assert rec.outcome == ("completed" if complete else "upstream_error")
