"""Everything a request needs, built once per config, and the holder that swaps it on reload.

A `Runtime` is the wired services of one config. The `RuntimeHolder` hands the current
one to new requests; a runtime replaced by a reload keeps serving the requests that
started on it and closes its resources once the last of them ends. Resources that do
not depend on what changed (quota store, admission gate, HTTP pools, the fake Claude,
telemetry) live in a `SharedPool` and are reused by the next runtime, refcounted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar, cast

from sidecar.handlers.app_websocket import LiveWebSockets
from sidecar.handlers.lingering import stop_lingering

if TYPE_CHECKING:
    import aiohttp

    from sidecar.admission import Admission
    from sidecar.cache.service import ResponseCache
    from sidecar.config import Config
    from sidecar.policy import AuthService
    from sidecar.quotas import QuotaGate
    from sidecar.relay import StreamRegistry
    from sidecar.routes import RouteTable
    from sidecar.stream.resume import Resume
    from sidecar.telemetry import Telemetry
    from sidecar.upstream import ClaudeClient

log = logging.getLogger("sidecar.runtime")
T = TypeVar("T")
# Seconds one runtime's resources get to close (the resume store's last flush included).
CLOSE_TIMEOUT = 8.0


async def finish_within(work: Awaitable[None], timeout: float) -> bool:
    """Run `work` as a task of its own for at most `timeout` s; False if it did not end.

    The caller waits on the task, never inside it: it is back in time even when `work`
    ignores its cancellation (then it is left cancelled, and the process exit ends it).
    Raises what `work` raised; cancelling the caller cancels `work`.
    """
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait([task], timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        return False
    task.result()
    return True


class Lifecycle:
    """In-flight request count of one runtime: it may close once this reaches zero."""

    def __init__(self) -> None:
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.inflight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no request is in flight; False if `timeout` passed first."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


@dataclass(slots=True, eq=False)  # identity: two runtimes are never the same one
class Runtime:
    """The wired services of one running config."""

    config: Config
    routes: RouteTable
    telemetry: Telemetry
    auth: AuthService
    quotas: QuotaGate
    admission: Admission
    streams: StreamRegistry
    claude: ClaudeClient
    app_session: aiohttp.ClientSession | None
    resume: Resume
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    cache: ResponseCache | None = None  # None: no route caches answers
    # The app route's relayed WebSockets, closed with 1001 when shutdown's grace is over.
    websockets: LiveWebSockets = field(default_factory=LiveWebSockets)


# --------------------------------------------------------------------------- shared resources


@dataclass(slots=True, eq=False)
class _Shared:
    key: object
    value: object
    stack: contextlib.AsyncExitStack
    users: int = 0


class SharedPool:
    """Resources reused by successive runtimes while their settings (`key`) stay equal."""

    def __init__(self) -> None:
        self._entries: dict[str, list[_Shared]] = {}

    async def use(
        self,
        stack: contextlib.AsyncExitStack,
        name: str,
        key: object,
        open_: Callable[[contextlib.AsyncExitStack], Awaitable[T]],
    ) -> T:
        """The `name` resource for `key`, opened by `open_` unless one is live; `stack` releases it.

        `open_` registers the resource's cleanup on the stack it is given; that cleanup runs
        when the last runtime using the resource releases it.
        """
        entries = self._entries.setdefault(name, [])
        entry = next((e for e in reversed(entries) if e.key == key), None)
        if entry is None:
            own = contextlib.AsyncExitStack()
            try:
                value = await open_(own)
            except BaseException:
                await own.aclose()
                raise
            entry = _Shared(key, value, own)
            entries.append(entry)
        entry.users += 1
        stack.push_async_callback(self._release, name, entry)
        return cast(T, entry.value)

    async def _release(self, name: str, entry: _Shared) -> None:
        entry.users -= 1
        if entry.users > 0:
            return
        entries = self._entries.get(name, [])
        if entry in entries:
            entries.remove(entry)
        await entry.stack.aclose()

    def live(self, name: str) -> int:
        """How many distinct `name` resources are open (tests check nothing leaks)."""
        return len(self._entries.get(name, []))


# --------------------------------------------------------------------------- the holder

Opener = Callable[["Config", contextlib.AsyncExitStack, SharedPool], Awaitable[Runtime]]


class RuntimeHolder:
    """The runtime new requests get (`current`), and the retired ones still finishing."""

    def __init__(self, opener: Opener) -> None:
        self._opener = opener
        self.shared = SharedPool()
        self.draining = False  # process-wide: set once on SIGTERM/SIGINT
        self.config_sha256: str | None = None  # of the file the current config came from
        # A plain attribute, not a property: the pipeline reads it once per request.
        self.current: Runtime
        self._stacks: dict[int, contextlib.AsyncExitStack] = {}  # id(runtime) → its resources
        self._live: list[Runtime] = []
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def live(self) -> list[Runtime]:
        """Every runtime not yet closed: the current one and those still finishing requests."""
        return list(self._live)

    async def open(self, config: Config) -> Runtime:
        """Build a runtime for `config` (not yet serving); raises if a resource fails to open."""
        stack = contextlib.AsyncExitStack()
        try:
            runtime = await self._opener(config, stack, self.shared)
        except BaseException:
            await stack.aclose()
            raise
        self._stacks[id(runtime)] = stack
        self._live.append(runtime)
        return runtime

    def install(self, runtime: Runtime, config_sha256: str | None = None) -> None:
        """Serve new requests from `runtime`; the previous one closes when its requests end."""
        previous = getattr(self, "current", None)
        self.current = runtime
        self.config_sha256 = config_sha256
        if previous is not None and previous is not runtime:
            task = asyncio.create_task(self._retire(previous))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def discard(self, runtime: Runtime) -> None:
        """Close a runtime that was opened but never installed."""
        await self._close(runtime)

    async def _retire(self, runtime: Runtime) -> None:
        await runtime.lifecycle.wait_idle()
        await self._close(runtime)

    async def _close(self, runtime: Runtime) -> None:
        stack = self._stacks.pop(id(runtime), None)
        if runtime in self._live:
            self._live.remove(runtime)
        if stack is not None:
            try:
                if not await finish_within(stack.aclose(), CLOSE_TIMEOUT):
                    log.warning("closing a runtime timed out", extra={"seconds": CLOSE_TIMEOUT})
            except Exception:  # one failing close must not keep the rest open
                log.exception("closing a runtime failed")

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no runtime has a request in flight; False if `timeout` passed first."""
        try:
            async with asyncio.timeout(timeout):
                for runtime in self.live:
                    await runtime.lifecycle.wait_idle()
        except TimeoutError:
            return False
        return True

    def stop_all_streams(self) -> int:
        """End every live Claude stream with a final `shutting_down` event, and close every
        relayed WebSocket with `1001`; how many. Calls still queued for a slot, and any call
        after, are turned away first."""
        # The queue and the resume store's readers may be shared by several runtimes.
        for admission in _each_once(runtime.admission for runtime in self.live):
            admission.stop()
        stopped = sum(
            runtime.streams.stop_all(shared_store=runtime.resume.shared) for runtime in self.live
        )
        # Readers of streams produced elsewhere.
        stopped += sum(
            resume.stop_readers() for resume in _each_once(runtime.resume for runtime in self.live)
        )
        # The app route's WebSockets: closed properly (1001), not cut when the listener closes.
        return stopped + sum(runtime.websockets.close_all() for runtime in self.live)

    async def close(self) -> None:
        """Close every runtime now (the listeners have already drained)."""
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for runtime in reversed(self.live):
            await self._close(runtime)
        await stop_lingering()  # sockets the app route closed on an error, still draining


def _each_once(objects: Iterable[T]) -> list[T]:
    """`objects` with each one once (a runtime shares some with the one it replaced)."""
    return list({id(item): item for item in objects}.values())
