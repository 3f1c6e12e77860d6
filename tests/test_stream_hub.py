"""The hub's numbering and keeping of events, without sockets."""

from __future__ import annotations

import gc
from typing import cast

import pytest

from sidecar.cache.recording import Recording
from sidecar.record import Outcome, StreamRecord
from sidecar.stream.adapter import HIGH_WATER, ClientChannel
from sidecar.stream.hub import FIRST_SEND, Generation, Subscriber
from sidecar.stream.store import StreamLog
from tests.support.waiting import eventually, holds


def generation() -> tuple[Generation, StreamLog]:
    log = StreamLog("S", "owner", max_bytes=1 << 20)
    record = StreamRecord(request_id="r", route="/", started=0.0)
    return Generation(record, stream_id="S", owner="owner", log=log, grace=1.0), log


def test_each_event_is_numbered_and_kept_whatever_the_chunking() -> None:
    gen, log = generation()
    out = gen.publish(b'data: {"token":"a"}\n\n')
    assert out is False  # nobody to lag
    gen.publish(b'data: {"token":"b"}\n\ndata: {"token":"c"}\n\n')
    gen.end(b'data: {"done":true}\n\n')
    assert list(log.events) == [
        b'id: S:1\ndata: {"token":"a"}\n\n',
        b'id: S:2\ndata: {"token":"b"}\n\n',
        b'id: S:3\ndata: {"token":"c"}\n\n',
        b'id: S:4\ndata: {"done":true}\n\n',
    ]
    assert log.final
    assert gen.final
    assert log.since(2) == list(log.events)[2:]


def test_bytes_that_are_not_events_are_never_kept() -> None:
    gen, log = generation()
    gen.send_raw(b": ping\n\n")
    assert list(log.events) == []
    assert (log.numbered, log.last) == (0, 0)


def test_a_generation_that_is_not_resumable_adds_no_ids() -> None:
    record = StreamRecord(request_id="r", route="/", started=0.0)
    gen = Generation(record)
    assert not gen.resumable
    sent = gen.publish(b'data: {"token":"a"}\n\n')
    assert sent is False
    assert gen.log is None


def test_events_their_writer_numbered_are_kept_as_they_are() -> None:
    """A translator that writes ids from the log (one event, or several in one chunk)."""
    gen, log = generation()
    log.numbered = 1
    gen.publish(b'id: S:1\ndata: {"token":"a"}\n\n')
    log.numbered = 3
    gen.publish(b'id: S:2\ndata: {"token":"b"}\n\nid: S:3\ndata: {"token":"c"}\n\n')
    gen.publish(b'data: {"token":"d"}\n\n')  # no id written: the generation gives one
    log.numbered += 1
    gen.end(b'id: S:5\ndata: {"done":true}\n\n')
    assert list(log.events) == [
        b'id: S:1\ndata: {"token":"a"}\n\n',
        b'id: S:2\ndata: {"token":"b"}\n\n',
        b'id: S:3\ndata: {"token":"c"}\n\n',
        b'id: S:4\ndata: {"token":"d"}\n\n',
        b'id: S:5\ndata: {"done":true}\n\n',
    ]
    assert (log.numbered, log.last) == (5, 5)
    assert log.since(3) == list(log.events)[3:]


class Channel:
    """What a subscriber's client connection was asked to send (a recording double)."""

    def __init__(self, gone: bool = False) -> None:
        self.sent: list[bytes] = []
        self.tail = b""
        self.heads: list[bytes] = []  # what left with the headers
        self.gone = gone

    def send(self, data: bytes) -> bool:
        self.sent.append(data)
        return False

    def start(self, data: bytes) -> bool:
        if self.gone:
            raise ConnectionResetError("client went away")
        self.heads.append(data)
        return False

    def finish(self, data: bytes) -> None:
        self.tail += data


def subscriber(channel: Channel) -> Subscriber:
    return Subscriber(cast(ClientChannel, channel))


def test_the_end_leaves_with_each_response_s_last_chunk() -> None:
    record = StreamRecord(request_id="r", route="/", started=0.0)
    gen = Generation(record)
    started_channel, waiting_channel = Channel(), Channel()
    started, waiting = subscriber(started_channel), subscriber(waiting_channel)
    started._started()  # its headers went out: it sends at once
    gen.attach(started)
    gen.attach(waiting)
    gen.publish(b"data: 1\n\n")
    gen.end(b"data: final\n\n", b"event: raw\n\n")
    assert started_channel.sent == [b"data: 1\n\n"]
    assert started_channel.tail == b"event: raw\n\ndata: final\n\n"
    # Never started: what it collected, the raw bytes and the final event, all at the end.
    assert waiting_channel.sent == []
    assert waiting_channel.tail == b"data: 1\n\nevent: raw\n\ndata: final\n\n"
    assert waiting.first is None
    assert gen.final


def test_at_the_end_raw_bytes_are_sent_but_only_events_are_kept() -> None:
    gen, log = generation()
    channel = Channel()
    reader = subscriber(channel)
    reader._started()
    gen.attach(reader)
    gen.end(b'data: {"done":true}\n\n', b"event: message_stop\n\n")
    assert list(log.events) == [b'id: S:1\ndata: {"done":true}\n\n']
    assert channel.tail == b'event: message_stop\n\nid: S:1\ndata: {"done":true}\n\n'
    assert log.final


def test_the_first_bytes_leave_with_each_subscriber_s_headers_in_one_send() -> None:
    gen, log = generation()
    first, reconnect = Channel(), Channel()
    gen.attach(subscriber(first))
    collected = Subscriber(cast(ClientChannel, reconnect), b"id: S:0\ndata: early\n\n")
    gen.attach(collected)
    gen.begin(b'data: {"token":"a"}\n\n', events=True)  # numbered and kept, as published
    assert first.heads == [b'id: S:1\ndata: {"token":"a"}\n\n']
    # A reader with a backlog: it leaves first, in the same send.
    assert reconnect.heads == [b'id: S:0\ndata: early\n\nid: S:1\ndata: {"token":"a"}\n\n']
    assert list(log.events) == [b'id: S:1\ndata: {"token":"a"}\n\n']
    gen.publish(b'data: {"token":"b"}\n\n')  # started: later events are sent as they come
    assert first.sent == reconnect.sent == [b'id: S:2\ndata: {"token":"b"}\n\n']


def test_a_reader_gone_at_the_start_ends_a_stream_only_when_it_cannot_be_resumed() -> None:
    gen, _ = generation()
    gen.attach(subscriber(Channel(gone=True)))
    staying = Channel()
    gen.attach(subscriber(staying))
    gen.begin(b"event: raw\n\n")  # raw bytes: never kept
    assert len(gen.subscribers) == 1
    assert staying.heads == [b"event: raw\n\n"]
    plain = Generation(StreamRecord(request_id="r", route="/", started=0.0))
    plain.attach(subscriber(Channel(gone=True)))
    with pytest.raises(ConnectionResetError):
        plain.begin(b"event: raw\n\n")


def test_a_backlog_past_the_first_send_leaves_after_the_headers() -> None:
    channel = Channel()
    reader = Subscriber(cast(ClientChannel, channel), b"x" * (FIRST_SEND + 1))
    assert reader.begin(b"y") is False
    assert channel.heads == [b""]  # the headers alone, at once
    assert channel.sent == [b"x" * (FIRST_SEND + 1) + b"y"]  # then paced by the client
    assert reader.first is None


class QueueChannel(Channel):
    """A started client connection whose socket takes only what `read` lets it take."""

    def __init__(self) -> None:
        super().__init__()
        self.queued = 0
        self.aborted = False

    def send(self, data: bytes) -> bool:
        self.sent.append(data)
        self.queued += len(data)
        return self.queued > HIGH_WATER

    def buffered(self) -> int:
        return self.queued

    def closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True

    def read(self) -> None:
        self.queued = 0


def started_reader(gen: Generation) -> QueueChannel:
    channel = QueueChannel()
    reader = Subscriber(cast(ClientChannel, channel), started=True)
    gen.attach(reader)
    return channel


def test_a_reader_that_stops_reading_holds_back_no_other_reader() -> None:
    """Claude pauses only when every reader lags; one left behind by more than a resume
    would replay is cut (it resumes from its last id), the others get every event."""
    gen, log = generation()
    reading, stopped = started_reader(gen), started_reader(gen)
    event = b'data: {"token":"' + b"x" * 1000 + b'"}\n\n'
    count = (HIGH_WATER + log.max_bytes) // len(event) + 2
    for n in range(count):
        lag = gen.publish(event)
        assert lag is False, f"Claude paused at event {n + 1} for the reader that stopped"
        reading.read()
    assert stopped.aborted
    assert len(gen.subscribers) == 1
    assert len(reading.sent) == count  # every event, none held back
    assert not reading.aborted


def test_claude_pauses_when_every_reader_lags() -> None:
    gen, _ = generation()
    first, second = started_reader(gen), started_reader(gen)
    event = b"data: " + b"x" * (HIGH_WATER // 2) + b"\n\n"
    assert gen.publish(event) is False
    assert gen.publish(event) is True  # both past the high-water mark: backpressure
    assert not first.aborted
    assert not second.aborted
    first.read()
    assert gen.publish(event) is False  # one keeps up again: the stream goes on


class Stopper:
    """A producer double: the stops it was asked for."""

    def __init__(self, ended: bool = False) -> None:
        self.stops: list[str] = []
        self.ended = ended  # Claude's body ended: its last events are on their way

    def stop(self, outcome: Outcome, error_type: str, message: str) -> None:
        self.stops.append(outcome)

    def final_event(self, outcome: Outcome, error_type: str, message: str) -> bytes | None:
        return None if self.ended else b'data: {"error":"%s"}\n\n' % error_type.encode()


@pytest.mark.parametrize("left", [False, True], ids=["attended", "left_to_followers"])
def test_a_generation_and_the_recording_following_it_are_freed_as_it_ends(left: bool) -> None:
    """No reference cycle between a generation and the response cache's recording of it
    (that recording holds the whole answer): both go as the stream ends, not whenever the
    cycle collector next runs."""
    gc.collect()
    gc.disable()
    try:
        recording = Recording(stream=True)
        gen = Generation(StreamRecord(request_id="r", route="/", started=0.0))
        gen.producer = Stopper()
        gen.kept_by(recording)
        cursor = recording.follow()
        assert cursor is not None
        if left:  # its client left, the follower reads on
            gen.unattended()
        recording.chunk(b"event: ping\n\n")
        gen.end(b"")
        recording.unfollow(cursor)
        del gen, recording
        assert gc.collect() == 0
    finally:
        gc.enable()


async def test_a_stream_its_followers_leave_goes_on_while_a_reader_elsewhere_reads_it() -> None:
    """Its own client gone past the grace while followers read it, then the followers gone:
    a client reading it from the shared store on another replica still attends it, as
    when nobody followed it; it is stopped once that reader is gone too."""
    log = StreamLog("S", "owner", max_bytes=1 << 20)
    record = StreamRecord(request_id="r", route="/", started=0.0)
    gen = Generation(record, stream_id="S", owner="owner", log=log, grace=0.05)
    producer = Stopper()
    gen.producer = producer
    recording = Recording(stream=True)
    gen.kept_by(recording)
    cursor = recording.follow()
    assert cursor is not None
    reader = subscriber(Channel())
    gen.attach(reader)
    gen.detach(reader)  # the grace starts
    await eventually(lambda: holds(not gen.in_grace))  # over, with a follower
    assert producer.stops == []
    log.readers_elsewhere = 1
    recording.unfollow(cursor)  # the last follower leaves
    assert producer.stops == []
    log.readers_elsewhere = 0  # that reader left too: stopped after the grace
    await eventually(lambda: holds(producer.stops == ["client_detached"]))


def test_a_cancel_while_others_follow_ends_the_stream_for_its_owner_only() -> None:
    gen, log = generation()
    producer = Stopper()
    gen.producer = producer
    recording = Recording(stream=True)
    gen.kept_by(recording)
    cursor = recording.follow()
    assert cursor is not None
    channel = Channel()
    reader = subscriber(channel)
    reader._started()
    gen.attach(reader)
    gen.publish(b'data: {"token":"a"}\n\n')
    gen.cancel()
    # The owner's reader and log end with the cancel's event; the call goes on.
    assert channel.tail == b'id: S:2\ndata: {"error":"cancelled"}\n\n'
    assert log.final
    assert log.last == 2
    assert not gen.final
    assert gen.subscribers == []
    assert producer.stops == []
    gen.publish(b'data: {"token":"b"}\n\n')  # for the followers only
    assert log.last == 2
    recording.unfollow(cursor)
    assert producer.stops == ["client_cancelled"]


def test_a_cancel_once_claude_s_body_ended_leaves_the_stream_to_end_as_it_does() -> None:
    gen, log = generation()
    gen.producer = Stopper(ended=True)
    recording = Recording(stream=True)
    gen.kept_by(recording)
    cursor = recording.follow()
    assert cursor is not None
    reader = subscriber(Channel())
    gen.attach(reader)
    gen.cancel()
    assert not log.final
    assert gen.log is log
    assert gen.subscribers == [reader]


@pytest.mark.parametrize("how", ["over", "ending", "cancelled"])
def test_a_cancel_tells_whether_it_stopped_anything(how: str) -> None:
    """A Stop is answered 204 only when it stopped something: not once the stream is over,
    its end on its way (while others follow it), or it was cancelled already for its
    owner (then 404, nothing live to stop)."""
    gen, _ = generation()
    producer = Stopper(ended=how == "ending")
    gen.producer = producer
    recording = Recording(stream=True)
    gen.kept_by(recording)
    assert recording.follow() is not None  # it goes on for a follower
    if how == "over":
        gen.end(b'data: {"done":true}\n\n')
    elif how == "cancelled":
        assert gen.cancel() is True
    assert gen.cancel() is False
    assert producer.stops == []
