"""A message batch's `results_url`, pointed back at the sidecar.

The API names the results file by an absolute URL on its own host
(`https://api.anthropic.com/v1/messages/batches/<id>/results`), which the official SDKs
fetch as given (`messages.batches.results()`): with it unchanged the client would call
Claude directly, past the sidecar, sending its sidecar credential to Claude and failing
for want of an API key. The URL is rewritten to the same path under the sidecar's own
address, as the client reached it, where the forward (and the sidecar's key) serves it.
"""

from __future__ import annotations

import json
from typing import Any, Final

BATCHES: Final = "/v1/messages/batches"
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def is_batch_answer(path: str) -> bool:
    """A batch object or page of them (create, list, retrieve, cancel); not a results file."""
    return (path == BATCHES or path.startswith(BATCHES + "/")) and not path.endswith("/results")


def _local(url: Any, base: str) -> Any:
    """`url` under `base` (the sidecar's address and route prefix) from `/v1/messages/batches/` on."""
    if not isinstance(url, str):
        return url
    start = url.find(BATCHES + "/")
    return url if start < 0 else base + url[start:]


def with_local_results(payload: bytes, base: str) -> bytes:
    """The answer with every `results_url` (of the batch, or of each batch of a page)
    under `base`; any other answer, or one that is not JSON, as it came."""
    try:
        answer = json.loads(payload)
    except ValueError:
        return payload
    if not isinstance(answer, dict):
        return payload
    batches = answer.get("data") if answer.get("type") != "message_batch" else [answer]
    changed = False
    for batch in batches if isinstance(batches, list) else ():
        if isinstance(batch, dict) and batch.get("results_url") is not None:
            local = _local(batch["results_url"], base)
            changed |= local != batch["results_url"]
            batch["results_url"] = local
    return _compact(answer).encode() if changed else payload
