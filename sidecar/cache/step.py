"""The cache step every Claude route passes before calling Claude.

`lookup` decides, before any quota or Claude slot is taken: a stored answer (HIT), an
identical request in flight to follow (HIT, coalesced), or a call to Claude (MISS,
recorded for the cache unless `Cache-Control: no-store`; BYPASS when the request is
sampled and the route does not cache those, or `no-cache` asked for a fresh answer,
which then refreshes the entry). A store that fails is skipped (counted), never the
request nor coalescing. `X-Cache` says so on an answer the cache gave (HIT) or on the
answer of the call it let through (MISS, BYPASS), never on a refusal. `serve` answers a
hit: a request for the quotas, no tokens unless `cache.charge_hits`, replayed through
the stream core.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from sidecar.cache.entry import CACHE_HEADER, Undecodable, decode
from sidecar.cache.key import cache_key, directives, sampled, scope_key
from sidecar.cache.recording import Cursor, Recording
from sidecar.cache.replay import recording_of, replay_stream
from sidecar.cache.stores import CacheStoreError
from sidecar.call.waiting import waiting
from sidecar.header_lists import header_value
from sidecar.pipeline import RequestContext
from sidecar.record import StreamRecord
from sidecar.stream.core import Translator
from sidecar.upstream import Attempt
from sidecar.usage import usage_so_far

HEADER = CACHE_HEADER
HIT_ATTRIBUTE = "sidecar.cache.hit"
Status = Literal["HIT", "MISS", "BYPASS"]


@dataclass(slots=True)
class CacheStep:
    """What the cache decided for one request."""

    ctx: RequestContext
    source: Recording | None = None  # a hit (stored or in flight): serve it
    tap: Recording | None = None  # a miss being recorded: hand it to the Claude call
    age: int = 0

    async def serve(
        self, record: StreamRecord, translator: Translator, input_estimate: int
    ) -> web.StreamResponse | None:
        """Answer from the cache; None when the followed call failed before answering.

        With `cache.charge_hits` the hit reserves as a call would (`input_estimate` plus
        the record's `max_tokens`) and is settled as a live stream would be: a replay
        that completed at the usage it replayed, one its client left at the input plus at
        least one output token per content delta replayed (`charged_tokens`).
        """
        source = self.source
        assert source is not None
        # Counted as a reader from here to every way out (an answer, a failure, its client
        # leaving): while any read it, the call goes on when its own client leaves.
        cursor = source.follow()
        if cursor is None:  # the call grew past what is stored meanwhile: its start is gone
            self._unanswered()
            return None
        try:
            return await self._serve(source, cursor, record, translator, input_estimate)
        finally:
            source.unfollow(cursor)

    def _unanswered(self) -> None:
        """The call it followed never answered, or can no longer be joined: this request
        calls Claude itself (and is not recorded)."""
        ctx = self.ctx
        ctx.cache_status = "MISS"
        if ctx.runtime.cache is not None:
            ctx.runtime.cache.count("miss")

    async def _serve(
        self,
        source: Recording,
        cursor: Cursor,
        record: StreamRecord,
        translator: Translator,
        input_estimate: int,
    ) -> web.StreamResponse | None:
        ctx = self.ctx
        if not source.ended and source.stream and not source.count:  # a call not answered yet
            early = waiting(ctx, translator)
            try:
                while not source.ended and not source.count:
                    await source.wait(source.count)
            finally:
                early.settle()
        while not source.ended and not source.stream and not source.count:
            await source.wait(source.count)
        runtime = ctx.runtime
        if not source.count or (not source.stream and not source.completed):
            self._unanswered()
            return None
        policy = ctx.route.policy
        lease = None
        if policy.cache.charge_hits:
            reserve = input_estimate + (record.max_tokens or 0)
            lease = await runtime.quotas.acquire(
                policy.quotas, policy.quota_scope, ctx.identity, ctx.client_ip, reserve
            )
            ctx.headers.update(lease.headers)
        else:  # a request for the request limits; no tokens, no Claude slot
            ctx.headers.update(
                await runtime.quotas.count_request(
                    policy.quotas, policy.quota_scope, ctx.identity, ctx.client_ip
                )
            )
        ctx.headers[HEADER] = "HIT"
        ctx.headers["Age"] = str(self.age)
        ctx.span.set_attribute(HIT_ATTRIBUTE, True)
        if source.origin is not None:  # a coalesced request: the call it waited on
            ctx.span.add_link(source.origin)
        used_in = used_out = 0  # what the answer cost Claude: charged when hits are
        try:
            if source.stream:
                paced = policy.cache.replay == "paced"
                response = await replay_stream(
                    ctx, source, cursor, record, translator, dict(ctx.headers), paced=paced
                )
            else:
                entry = source.entry  # set with `completed`, for a follower too
                if entry is not None:
                    used_in, used_out = entry.input_tokens, entry.output_tokens
                response = web.Response(
                    status=200, body=source.chunks[0], headers=ctx.headers,
                    content_type="application/json",
                )  # fmt: skip
        finally:
            if source.stream:  # the usage replayed so far (all of it, unless cut short),
                # as a live stream that got as far is charged; the estimate until
                # `message_start` was replayed
                used_in, used_out = usage_so_far(record, input_estimate)
            if lease is not None:
                await lease.settle(used_in, used_out)
        runtime.telemetry.cache_hit(used_in + used_out)
        return response

    def abandon(self) -> None:
        """The request was refused before its Claude call started."""
        if self.tap is not None:
            self.tap.abandon()


async def lookup(
    ctx: RequestContext,
    body: dict[str, Any],
    stream: bool,
    attempt: Attempt,
    *,
    fresh: bool = False,
) -> CacheStep:
    """The cache's decision for a validated, screened request whose body is `body`, sent
    to Claude as `attempt` says (its path and query, and the headers Claude receives).

    `fresh`: the request itself asks for a new answer (useChat's regenerate), as
    `Cache-Control: no-cache` does: no lookup, and the entry is refreshed."""
    runtime = ctx.runtime
    cache = runtime.cache
    policy = ctx.route.policy.cache
    step = CacheStep(ctx)
    if cache is None or not policy.enabled:
        return step
    wanted = directives(header_value(ctx.request.headers, "Cache-Control"))
    fresh = fresh or "no-cache" in wanted
    if sampled(body) and not policy.include_sampled:
        return _decided(step, "BYPASS", "bypass")
    scope = scope_key(policy.scope, ctx.scope())
    key = cache_key(
        ctx.route.handler, body, attempt.headers, scope, attempt.path, runtime.claude.identity
    )
    store_up = True  # False once its lookup failed: followed, not written
    if not fresh:
        result: str | None = "miss"
        flight = cache.inflight.get(key)
        if flight is None:
            try:
                stored = await cache.store.get(key)
            except CacheStoreError as exc:
                # Skipped (counted once), never the request; coalescing needs no store:
                # identical requests still follow this call, whose answer is not written.
                cache.outage.failed(str(exc), ctx.request_id)
                cache.count("skipped")
                stored, result, store_up = None, None, False
            else:
                cache.outage.answered()
            if stored is not None:
                try:
                    entry = decode(stored)
                except Undecodable:
                    entry = None  # an older format or a damaged value: a miss, then replaced
                # Served for the `ttl_seconds` of this route as configured now: an entry
                # stored by a route keeping them longer, or before a reload shortened it,
                # is as good as expired here (a miss, then replaced).
                age = time.time() - entry.created if entry is not None else 0.0
                if entry is not None and entry.stream == stream and age < policy.ttl_seconds:
                    step.source = recording_of(entry)
                    step.age = max(0, int(age))
                    return step
            flight = cache.inflight.get(key)  # one may have started while the store answered
        if flight is not None and flight.stream == stream:
            step.source = flight
            return step
        _decided(step, "MISS", result)
    else:
        _decided(step, "BYPASS", "bypass")
    if "no-store" not in wanted:
        step.tap = cache.record(key, stream, policy.ttl_seconds, keep=store_up)
    return step


def _decided(step: CacheStep, status: Status, result: str | None) -> CacheStep:
    """A call to Claude: `status` goes on that call's answer only (`call.run`), not on a
    refusal made before it (quota, resume store) or instead of it (Claude unreachable)."""
    ctx = step.ctx
    ctx.cache_status = status
    ctx.span.set_attribute(HIT_ATTRIBUTE, False)
    if result is not None:
        cache = ctx.runtime.cache
        assert cache is not None
        cache.count(result)
    return step
