"""The Message Batches API, as the fake answers it: a batch ends as soon as it is created.

Each request's result is the reply `POST /v1/messages` would give (its knobs read from
its own directive; faults do not apply), or an `errored` result for params the Messages
API would refuse. The batch's `results_url` names the host the request came to, as the
API names its own (`https://api.anthropic.com/v1/messages/batches/<id>/results`).
"""

from __future__ import annotations

import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from sidecar.fake_claude.knobs import FakeSettings, KnobError, parse_directive, resolve_knobs
from sidecar.fake_claude.reply import last_user_text, message_json, plan_reply

MAX_BATCHES: Final = 1000  # the oldest are forgotten past it (the fake serves long runs)
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class BatchError(ValueError):
    """A create request the API refuses as a whole (400 `invalid_request_error`)."""


@dataclass(slots=True)
class Batch:
    """One batch: its API object and its results file (JSONL)."""

    info: dict[str, Any]
    results: bytes


def _timestamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _result(
    params: Any, settings: FakeSettings, validate: Callable[[Mapping[str, Any]], None]
) -> dict[str, Any]:
    """A request's result: its message, or the error the Messages API would answer."""
    try:
        if not isinstance(params, dict):
            raise ValueError("params: Input should be a valid dictionary")
        validate(params)
        knobs = resolve_knobs(parse_directive(last_user_text(params)), settings)
    except (ValueError, KnobError) as error:  # `validate` raises the API's refusal as one
        error_body = {"type": "invalid_request_error", "message": str(error)}
        return {"type": "errored", "error": {"type": "error", "error": error_body}}
    reply = plan_reply(params, knobs, settings.model)
    return {"type": "succeeded", "message": message_json(reply)}


class BatchStore:
    """The batches created so far (at most `MAX_BATCHES`, newest last)."""

    def __init__(self) -> None:
        self._batches: OrderedDict[str, Batch] = OrderedDict()

    def create(
        self,
        body: Mapping[str, Any],
        origin: str,
        settings: FakeSettings,
        validate: Callable[[Mapping[str, Any]], None],
    ) -> dict[str, Any]:
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            raise BatchError("requests: at least one request is required")
        lines: list[bytes] = []
        ids: set[str] = set()
        succeeded = 0
        for index, item in enumerate(requests):
            custom_id = item.get("custom_id") if isinstance(item, dict) else None
            if not isinstance(custom_id, str) or not custom_id:
                raise BatchError(f"requests.{index}.custom_id: Field required")
            if custom_id in ids:
                raise BatchError(f"requests.{index}.custom_id: {custom_id!r} is not unique")
            ids.add(custom_id)
            result = _result(item.get("params"), settings, validate)
            succeeded += result["type"] == "succeeded"
            lines.append(_compact({"custom_id": custom_id, "result": result}).encode() + b"\n")
        now = time.time()
        batch_id = "msgbatch_" + secrets.token_hex(12)
        info = {
            "id": batch_id,
            "type": "message_batch",
            "processing_status": "ended",
            "request_counts": {
                "processing": 0,
                "succeeded": succeeded,
                "errored": len(lines) - succeeded,
                "canceled": 0,
                "expired": 0,
            },
            "ended_at": _timestamp(now),
            "created_at": _timestamp(now),
            "expires_at": _timestamp(now + 86400),
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": f"{origin}/v1/messages/batches/{batch_id}/results",
        }
        self._batches[batch_id] = Batch(info, b"".join(lines))
        while len(self._batches) > MAX_BATCHES:
            self._batches.popitem(last=False)
        return info

    def get(self, batch_id: str) -> Batch | None:
        return self._batches.get(batch_id)

    def delete(self, batch_id: str) -> bool:
        return self._batches.pop(batch_id, None) is not None

    def page(self) -> dict[str, Any]:
        """`GET /v1/messages/batches`: every batch, newest first, in one page."""
        data = [batch.info for batch in reversed(self._batches.values())]
        return {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
