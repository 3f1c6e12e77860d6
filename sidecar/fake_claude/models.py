"""The fake's Models API: `GET /v1/models` (paginated) and `GET /v1/models/{model_id}`.

Shaped like the real API, so tools that list models at start (SDK clients, UIs) work
against the embedded default: newest first, `limit` (1-1000, default 20) with
`after_id` / `before_id` cursors, and `{data, has_more, first_id, last_id}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

# The models the fake answers as (newest first), with the API's `created_at` format.
MODELS: Final[tuple[dict[str, str], ...]] = (
    {"id": "claude-opus-5-5", "display_name": "Claude Opus 5.5",
     "created_at": "2026-09-30T00:00:00Z"},
    {"id": "claude-sonnet-5-5", "display_name": "Claude Sonnet 5.5",
     "created_at": "2026-09-29T00:00:00Z"},
    {"id": "claude-haiku-5-5", "display_name": "Claude Haiku 5.5",
     "created_at": "2026-09-28T00:00:00Z"},
)  # fmt: skip
DEFAULT_LIMIT: Final = 20
MAX_LIMIT: Final = 1000


class ModelQueryError(ValueError):
    """A query parameter the API would refuse (answered as 400 invalid_request_error)."""


def model_object(entry: Mapping[str, str]) -> dict[str, Any]:
    return {"type": "model", **entry}


def catalogue(extra: str | None = None) -> list[dict[str, str]]:
    """The listed models; `extra` (the fake's configured reply model) first when not listed."""
    models = list(MODELS)
    if extra and all(entry["id"] != extra for entry in models):
        models.insert(0, {"id": extra, "display_name": extra, "created_at": "2026-10-01T00:00:00Z"})
    return models


def model_info(model_id: str, extra: str | None = None) -> dict[str, Any] | None:
    """The model object of `model_id`, or None (the API's 404)."""
    for entry in catalogue(extra):
        if entry["id"] == model_id:
            return model_object(entry)
    return None


def model_page(query: Mapping[str, str], extra: str | None = None) -> dict[str, Any]:
    """One page of the list, as the API pages it; raises ModelQueryError on a bad query."""
    raw_limit = query.get("limit", str(DEFAULT_LIMIT))
    try:
        limit = int(raw_limit)
    except ValueError:
        raise ModelQueryError("limit: Input should be a valid integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise ModelQueryError(f"limit: Input should be between 1 and {MAX_LIMIT}")
    models = catalogue(extra)
    ids = [entry["id"] for entry in models]
    after, before = query.get("after_id"), query.get("before_id")
    if after is not None and before is not None:
        raise ModelQueryError("after_id and before_id cannot both be given")
    for cursor in (after, before):
        if cursor is not None and cursor not in ids:
            raise ModelQueryError(f"{cursor!r} is not a model id of this list")
    if after is not None:
        start = ids.index(after) + 1
        page, has_more = models[start : start + limit], start + limit < len(models)
    elif before is not None:
        end = ids.index(before)
        page, has_more = models[max(0, end - limit) : end], end - limit > 0
    else:
        page, has_more = models[:limit], limit < len(models)
    return {
        "data": [model_object(entry) for entry in page],
        "has_more": has_more,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
    }
