"""What the fake saw: bounded history, stream records and counters, and a reset that
keeps open streams counted."""

from __future__ import annotations

from sidecar.fake_claude.state import FakeClaudeState, ReceivedRequest


def test_history_keeps_the_newest_requests_and_streams_only() -> None:
    state = FakeClaudeState(history=2)
    for n in range(3):
        state.received(ReceivedRequest("POST", f"/v1/messages?n={n}", {}, None))
        state.stream_opened(f"msg_{n}")
    assert [request["path"] for request in state.requests] == ["/v1/messages?n=1",
                                                               "/v1/messages?n=2"]  # fmt: skip
    assert list(state.streams) == ["msg_1", "msg_2"]
    assert state.stats()["requests"] == 3  # counters are not bounded


def test_a_closed_stream_is_counted_by_its_outcome_and_leaves_the_open_count() -> None:
    state = FakeClaudeState()
    done, cut = state.stream_opened("msg_a"), state.stream_opened("msg_b")
    done.sent("message_start")
    state.stream_closed(done, "completed")
    state.fault_applied("stall")
    stats = state.stats()
    assert (stats["streams_started"], stats["streams_completed"], stats["open_streams"]) == (
        2, 1, 1,
    )  # fmt: skip
    assert stats["streams_cancelled"] == 0  # every counter is named, at zero or not
    assert stats["faults_stall"] == 1
    assert (done.outcome, cut.outcome) == ("completed", "open")
    assert list(state.sent_at) == ["msg_a", "msg_b"]
    assert len(state.sent_at["msg_a"]) == 1


def test_a_reset_forgets_history_but_not_the_streams_still_open() -> None:
    state = FakeClaudeState()
    state.received(ReceivedRequest("POST", "/v1/messages", {}, None))
    state.stream_opened("msg_a")
    state.fail_counts["k"] += 1
    state.reset()
    assert (len(state.requests), state.streams, state.fail_counts) == (0, {}, {})
    assert state.stats()["requests"] == 0
    assert state.stats()["open_streams"] == 1
