"""A fake Claude speaking the Messages API: the `builtin:fake` runtime and the peer of tests.

Routes: `POST /v1/messages` (streaming or not), `POST /v1/messages/count_tokens`,
`GET /v1/models` and `GET /v1/models/{model_id}` (the Models API's shapes and paging),
`GET /_fake/stats` (counters as JSON), `POST /_fake/reset`, `POST /_fake/release` (ends
stalls); anything else is a 404 `not_found_error`. Every response carries `request-id`; errors use Anthropic's JSON
`{"type":"error","error":{"type":..,"message":..},"request_id":"req_.."}`.

Requests are refused (400) as the API refuses them for what `history` checks: a server
tool call without its result, a thinking block with a wrong signature, a tool round trip
under extended thinking whose assistant turn lost its thinking block.

Output is deterministic: words picked by a hash of the last user message's text, one
word per text delta (one delta ≈ one output token). Input tokens ≈ ceil(chars / 4) of
the system prompt and all messages.

Knobs, per request, as `x-fake-<knob>` headers (`_` may be written `-`) or as a
directive in the last user message (so they pass through proxies and `?prompt=`);
headers win over the directive, which wins over the process settings:

    [[fake fault=overloaded retry_after=2 tokens=50 tps=100 ttft_ms=10 content=tool_use]]

- `tokens` (text deltas), `tps` (deltas per second, 0 = unpaced), `ttft_ms`
  (pause after message_start), `content` = text | tool_use | thinking | web_search
  | web_search_error
  (a request with `thinking` enabled gets a signed thinking block first, as from the API).
- `fault` = rate_limit (429) | overloaded (529) | server_error (500) | bad_request (400)
  | auth (401) | midstream_error (200, `after` deltas, then `event: error` overloaded)
  | stall (message_start, then silence until the client leaves) | stall_before_start
  (headers only) | stall_midstream (`after` deltas, then silence until the client leaves)
  | drop (abort the connection after `after` deltas) | slow_headers
  (wait `delay_ms`, default 1000, then answer normally).
- `retry_after` (seconds, the `retry-after` header of error answers), `after`
  (default 3), `fail_times` + `fail_key` (the fault hits only the first
  `fail_times`, default 1, requests carrying that key), `stamp=1` (each text delta
  is its send time in monotonic ns: benchmarks measure delay end to end).

    python -m sidecar.fake_claude --port 0 [--tokens 40 --tps 0 --ttft-ms 0 --api-key K]
"""

from sidecar.fake_claude.knobs import FakeSettings, KnobError, Knobs, parse_directive
from sidecar.fake_claude.server import (
    FAKE_SETTINGS,
    FakeServer,
    make_fake_claude_app,
    running_fake_claude,
)
from sidecar.fake_claude.state import FAKE_STATE, FakeClaudeState, ReceivedRequest, StreamRecord

__all__ = [
    "FAKE_SETTINGS",
    "FAKE_STATE",
    "FakeClaudeState",
    "FakeServer",
    "FakeSettings",
    "KnobError",
    "Knobs",
    "ReceivedRequest",
    "StreamRecord",
    "make_fake_claude_app",
    "parse_directive",
    "running_fake_claude",
]
