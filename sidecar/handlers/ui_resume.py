"""Stream resume on the `ui` route, as the Vercel AI SDK's `useChat({resume: true})` asks.

A chat turn (`POST <route>`) with resume on is a resumable generation like the prompt
route's, and the store remembers which stream is the chat's newest for the caller
(`bind`): the body's `id` is useChat's chat id. `GET <route>/<chat id>/stream` (`answer`)
then replays that stream's whole UI message from its first event (the SDK rebuilds the
message from its `start`), then its live tail, to its `finish` and `data: [DONE]`. With
nothing to resume (no such chat for this caller, the stream finished or expired) it
answers 204, which the SDK reads as "nothing to resume". The mapping lives in the resume
store, so the reconnect may land on any replica (Redis store) and is per owner: another
caller's chat id names nothing.
"""

from __future__ import annotations

import re
from typing import Any, Final

from aiohttp import web

from sidecar.call.stream import Resumable
from sidecar.errors import reject
from sidecar.handlers import resume
from sidecar.handlers.ui_stream import DONE, HEADERS, chunk, closing_chunks
from sidecar.pipeline import RequestContext
from sidecar.stream.resume import owner_of
from sidecar.stream.store import StoreError

# useChat's ids are short random strings (nanoid-like); anything else gets no mapping.
_CHAT_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")


def chat_id_of(value: object) -> str | None:
    """The body's `id` when it can name a chat in the store, else None."""
    if isinstance(value, str) and _CHAT_ID.fullmatch(value):
        return value
    return None


def lost_event(error_type: str, message: str) -> bytes:
    """A resumed stream whose producer died ends like a failed turn: `error`, then [DONE]
    (after the chunks closing the parts it left open: `closing_chunks`)."""
    return chunk({"type": "error", "errorText": message}) + DONE


async def bind(ctx: RequestContext, chat_id: str, plan: Resumable) -> None:
    """Name `plan`'s stream as the chat's newest for this caller. A store failure costs
    only the chat's resume (the turn still streams): counted and logged as fail_open."""
    try:
        await ctx.runtime.resume.store.bind_chat(plan.owner, chat_id, plan.stream_id)
    except StoreError as exc:
        ctx.runtime.telemetry.resume_store_error("fail_open")
        ctx.runtime.resume.outage.failed(str(exc), ctx.request_id)


async def answer(ctx: RequestContext, chat_id: str) -> web.StreamResponse:
    """`GET <route>/<chat id>/stream`: the chat's live message from its start, else 204."""
    nothing = web.Response(status=204, headers=ctx.headers)
    if chat_id_of(chat_id) is None:
        return nothing
    runtime = ctx.runtime
    store = runtime.resume.store
    owner = owner_of(ctx.scope())
    try:
        stream_id = await store.chat_stream(owner, chat_id)
        if stream_id is None:
            return nothing  # a probe on mount with nothing to resume: not a reconnect
        live = runtime.resume.hub.get(stream_id)
        if live is not None:
            running = not live[0].final and live[0].owner == owner
        else:  # finished here, or produced by another replica
            info = await store.lookup(stream_id)
            running = info is not None and not info.final and info.owner == owner
    except StoreError:
        runtime.telemetry.resume_store_error("fail_closed")
        raise reject(
            "resume_store_error", "the resume store is unavailable", headers={"Retry-After": "1"}
        ) from None
    if not running:  # the message is complete: the client has it (or never will)
        runtime.telemetry.resumed("expired")
        return nothing
    return await resume.resume(ctx, f"{stream_id}:0", lost_event, HEADERS, closing_chunks)


def chat_field(fields: dict[str, Any]) -> str | None:
    """The chat id of a POST body's fields (`id`), validated."""
    return chat_id_of(fields.get("id"))
