"""Cancellation that a library swallowed, honoured at the next turn of a loop.

On Python 3.11, `asyncio.wait_for` returns the result instead of raising when a cancel
lands just as the awaited call completes; redis-py wraps every socket write in it. The
cancel is lost, but the task still counts it (`Task.cancelling()`), so a loop that
calls Redis over and over (a resume reader, its liveness refresh, a quota lease's
renewal) checks the count once per turn: a stop it was told of is never lost.
"""

from __future__ import annotations

import asyncio


def honour_cancel() -> None:
    """Raise `CancelledError` if the current task was asked to stop and never was."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
