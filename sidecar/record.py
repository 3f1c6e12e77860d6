"""The per-stream record: one Claude call's facts, written as they happen.

The call runner creates it with the request's side and sets the outcome; the relay and
the usage observer add what Claude sent (chunks, times, ids, usage); telemetry keeps
its own bookkeeping in it (captured content, the fields both log lines share).
Telemetry reads it when the stream starts (span, `stream_start` line) and when it ends;
the quota settlement reads its usage.

Plain slotted attributes so the hot path only does attribute writes; derived values
(durations, rates, cost) are computed once, when the stream ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

# How a call ended. `client_detached`: every client left a resumable stream and none came
# back within the detach grace (the generation was cancelled); a generation that finished
# with nobody attached is `completed`. `client_stalled`: the client accepted no bytes for
# `claude.client_stall_timeout_seconds`.
Outcome = Literal[
    "completed", "client_cancelled", "client_detached", "client_stalled", "upstream_error",
    "idle_timeout", "shutting_down", "rejected",
]  # fmt: skip


OPERATION: Final = "chat"  # GenAI operation name of a Messages call


@dataclass(slots=True)
class StreamRecord:
    """One Claude call as the sidecar saw it. Times are `time.perf_counter()` seconds."""

    request_id: str
    route: str  # the matched route's path prefix (bounded cardinality)
    started: float  # request arrival
    request_model: str = ""
    max_tokens: int | None = None
    stream: bool = True
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop_sequences: list[str] | None = None
    server_address: str = ""
    server_port: int | None = None
    user: str | None = None
    tenant: str | None = None
    api_key_name: str | None = None
    admitted: bool = False  # holds a stream slot (counted in sidecar.streams.active)
    queue_wait: float = 0.0
    retries: int = 0
    upstream_status: int | None = None
    upstream_started: float | None = None  # first attempt sent (after admission)
    first_chunk_at: float | None = None  # first body bytes from Claude
    first_token_at: float | None = None  # first content delta written to the client
    last_chunk_at: float | None = None
    chunks: int = 0  # upstream body chunks relayed
    output_deltas: int = 0  # content deltas seen (≈ output chunks)
    response_id: str | None = None
    response_model: str | None = None
    stop_reason: str | None = None
    input_tokens: int = 0  # uncached input, as Anthropic reports it
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    output_tokens: int = 0
    outcome: Outcome | None = None  # None until the call's end decides it
    error_type: str | None = None
    ended: float | None = None
    capture: bool = False  # telemetry.capture_content: keep the texts below
    system_text: str | None = None  # GenAI `gen_ai.system_instructions` JSON, when captured
    prompt_text: str | None = None  # GenAI `gen_ai.input.messages` JSON, when captured
    completion_parts: list[str] = field(default_factory=list)  # text deltas, when captured
    log_base: dict[str, Any] | None = None  # fields both stream log lines share (telemetry)
    pending_start: bool = False  # telemetry's stream start not yet complete (`stream_started`)
    # The client- or upstream-chosen values above as telemetry carries them: bounded
    # (`sidecar.telemetry.bounded`), set by telemetry when the stream starts and ends.
    model_label: str = "other"
    response_model_label: str | None = None
    error_label: str = "_OTHER"
    stream_id: str | None = None  # resumable streams: the id clients resume with

    @property
    def total_input_tokens(self) -> int:
        """Input as the GenAI conventions count it for Anthropic: uncached + cache write + read."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens
