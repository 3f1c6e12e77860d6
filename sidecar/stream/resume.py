"""Resumable streams: ids, owners, the cursor a client resumes from, and the live generations.

A stream id is 144 random bits (URL-safe base64); each event the client sees carries
`id: <stream id>:<n>`, so the `Last-Event-ID` an `EventSource` sends back names both the
stream and the last event it got. The owner is a hash of the identity that started the
stream (user, API key and tenant, or the client IP when nobody is authenticated): only
the same caller may read or cancel it.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import re
import secrets
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final

from sidecar.config import Config
from sidecar.errors import reject
from sidecar.outage import Outage
from sidecar.stream.store import ResumeStore

if TYPE_CHECKING:
    from opentelemetry.trace import Span
    from redis.asyncio import Redis

    from sidecar.scope import CallerScope
    from sidecar.stream.hub import Generation

log = logging.getLogger("sidecar.resume")
HEADER: Final = "Sidecar-Stream-Id"
STATUS_HEADER: Final = "Sidecar-Resume"  # `unavailable` when the store failed (fail_open)
QUERY: Final = "last_event_id"
# Exactly the spelling the stream's event ids use: a stream id as `new_stream_id` makes
# it and the event number in decimal without a sign or leading zeros. Anything else
# (`:01`, an id of another length) names no event ever sent: malformed, not unknown.
_CURSOR: Final = re.compile(r"([A-Za-z0-9_-]{24}):(0|[1-9][0-9]{0,11})")
# Around a cursor, only what HTTP and the SSE rules treat as blank (`str.strip` would
# also take Unicode spaces off, accepting a cursor never sent).
BLANK: Final = " \t"


def new_stream_id() -> str:
    """144 random bits; never guessable, never containing the `:` of the cursor."""
    return secrets.token_urlsafe(18)


_STREAM_ID: Final = re.compile(r"[A-Za-z0-9_-]{24}")


def is_stream_id(value: str) -> bool:
    """Whether `value` has the shape `new_stream_id` gives (24 URL-safe characters)."""
    return _STREAM_ID.fullmatch(value) is not None


def owner_of(scope: CallerScope) -> str:
    """Who may read a stream: the verified caller as its trust source vouches for it, or
    the client IP when there is none (`sidecar.scope`): `alice` of another issuer, key or
    deployment sharing the resume store is another caller."""
    return hashlib.blake2b(scope.caller.encode(), digest_size=16).hexdigest()


def parse_cursor(value: str) -> tuple[str, int]:
    """`<stream id>:<n>` → (stream id, n); a 400 naming the problem otherwise."""
    match = _CURSOR.fullmatch(value.strip(BLANK))
    if match is None:
        raise reject(
            "resume_malformed",
            "Last-Event-ID must be <stream id>:<event number> as sent in the stream's event ids",
        )
    return match[1], int(match[2])


class LiveGenerations:
    """The generations this process is producing, by stream id, and their tasks."""

    def __init__(self) -> None:
        self._live: dict[str, tuple[Generation, Span]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._live)

    def add(self, generation: Generation, span: Span) -> None:
        assert generation.stream_id is not None
        self._live[generation.stream_id] = (generation, span)

    def remove(self, generation: Generation) -> None:
        if generation.stream_id is not None:
            self._live.pop(generation.stream_id, None)

    def stream_ids(self) -> list[str]:
        """The ids of the generations live here."""
        return list(self._live)

    def get(self, stream_id: str) -> tuple[Generation, Span] | None:
        return self._live.get(stream_id)

    def spawn(
        self, producer: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop
    ) -> asyncio.Task[None]:
        """Run a generation's producer on `loop` (its response's: looking the running loop
        up costs a `getpid()` system call on Python 3.11); kept referenced until it ends."""
        task = loop.create_task(producer)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self, timeout: float = 1.0) -> None:
        """Wait for producers still running (their runtime keeps them; this is the backstop);
        those still running after `timeout` are cancelled, and waited for as long again."""
        tasks = list(self._tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=timeout)


class Resume:
    """The resume store and this process's live generations (kept across reloads)."""

    def __init__(self, store: ResumeStore) -> None:
        self.store = store
        self.hub = LiveGenerations()
        # Store failures that cost a stream its resume: logged once per outage.
        self.outage = Outage(logging.getLogger("sidecar.resume"), "resume store")
        # Clients reading a stream here from the store (one produced elsewhere, or over),
        # by stream id: bounded per stream as the producer bounds its own readers.
        self.store_readers: collections.Counter[str] = collections.Counter()
        # The requests reading a stream from the store here, and those told to stop.
        self.replays: set[asyncio.Task[object]] = set()
        self._stopping: set[asyncio.Task[object]] = set()
        # Set by `stop_readers`: a read that starts after it ends at once, as they did.
        self.readers_stopped = False

    def stop_readers(self) -> int:
        """End every read from the store with a `shutting_down` event (shutdown); how many.
        The stop holds for reads that start later (`readers_stopped`)."""
        self.readers_stopped = True
        told = [task for task in self.replays if task not in self._stopping]
        for task in told:
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
            task.cancel()
        return len(told)

    def stopped(self, task: asyncio.Task[object]) -> bool:
        """`task` was cancelled by `stop_readers`: it may go on to write its last event."""
        if task not in self._stopping:
            return False
        task.uncancel()
        return True

    @property
    def shared(self) -> bool:
        """Another replica can read this store (a stream may be resumed elsewhere)."""
        return self.store.name != "memory"

    async def close(self) -> None:
        await self.hub.close()
        await self.store.close()


def make_store(config: Config, client: Redis | None = None) -> ResumeStore:
    """The configured store (explicit switch); `client`: a shared Redis client to use."""
    resume = config.resume
    if resume.enabled and resume.store == "redis":
        from sidecar.stream.redis_store import RedisResumeStore

        url = config.resume_redis_url
        assert url is not None  # the config validator requires one
        return RedisResumeStore(
            url.get_secret_value(),
            ttl=resume.ttl_seconds,
            max_buffer_bytes=resume.max_buffer_bytes,
            timeout=resume.redis_timeout_seconds,
            client=client,
        )
    return ResumeStore(
        ttl=resume.ttl_seconds,
        max_buffer_bytes=resume.max_buffer_bytes,
        max_total_bytes=resume.max_total_bytes,
    )


def store_key(config: Config) -> tuple[object, ...]:
    """The settings the store depends on: a reload keeps it while these are unchanged."""
    resume = config.resume
    url = config.resume_redis_url
    redis = resume.enabled and resume.store == "redis"
    return (
        "redis" if redis else "memory",
        url.get_secret_value() if url is not None and redis else None,
        resume.redis_timeout_seconds,
        resume.ttl_seconds,
        resume.max_buffer_bytes,
        resume.max_total_bytes,
    )
