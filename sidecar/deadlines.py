"""Many waits of one length under one loop timer.

`asyncio.timeout` arms a loop timer for every wait and cancels it after, which is a
measurable part of a short call. Where every wait has the same length, deadlines fall
due in the order the waits began: one timer, armed for the oldest wait still open,
covers them all, and a wait costs a dict insert and a dict pop. When the timer fires
it cancels the tasks whose time is up and re-arms for the oldest one left, so a
steady flow of calls arms about one timer per wait length, however many calls pass.

A task past its deadline is cancelled, as `asyncio.timeout` does, and `stop` says
whether the cancellation was the deadline's (then the caller raises its own timeout
error) or someone else's (the client went away: the cancellation goes on).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

# A timer may fire a little before its time (loop clocks count whole milliseconds):
# a deadline this close counts as passed rather than re-arming the timer for a sliver.
_SLACK: Final = 0.001

_Task = asyncio.Task[Any]


class Deadlines:
    """Waits of `seconds` each: `start` one in the current task, `stop` it when done."""

    __slots__ = ("_expired", "_loop", "_timer", "_waiting", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        # Open waits in the order they began (= deadline order): task -> (deadline,
        # the task's cancellation count when it began).
        self._waiting: dict[_Task, tuple[float, int]] = {}
        # Tasks cancelled for their deadline, not yet stopped -> their count before it.
        self._expired: dict[_Task, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> _Task:
        """Begin a wait in the running task (of `loop`, when the caller knows it: looking
        the running loop up costs a `getpid()` system call on Python 3.11); returns the
        task to pass to `stop`."""
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("a deadline needs a running task")
        loop = task.get_loop()
        when = loop.time() + self.seconds
        self._waiting[task] = (when, task.cancelling())
        if self._timer is None:
            self._loop = loop
            self._timer = loop.call_at(when, self._fire)
        return task

    def stop(self, task: _Task) -> bool:
        """End `task`'s wait (again: no effect). True if its deadline passed and cancelled
        it, and nobody else did: the `CancelledError` it got stands for a timeout."""
        if self._waiting.pop(task, None) is not None:
            return False
        before = self._expired.pop(task, None)
        if before is None:
            return False
        return task.uncancel() <= before

    def pending(self) -> int:
        """Waits still open (tests)."""
        return len(self._waiting)

    def _fire(self) -> None:
        self._timer = None
        loop = self._loop
        if loop is None:
            return
        now = loop.time() + _SLACK
        waiting = self._waiting
        while waiting:
            task = next(iter(waiting))
            when, before = waiting[task]
            if when > now:
                self._timer = loop.call_at(when, self._fire)
                return
            del waiting[task]
            if not task.done():
                self._expired[task] = before
                task.cancel()

    def close(self) -> None:
        """Stop the timer (open waits are left to end on their own)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
