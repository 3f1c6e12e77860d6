"""One log line when a store starts failing and one when it answers again, not one per request.

A store that is down fails every request that uses it: each failure is counted (metrics),
but logging each would flood the logs for as long as the outage lasts.
"""

from __future__ import annotations

import logging


class Outage:
    """The outage state of one store: `failed` warns on the first failure, `answered` logs
    the recovery (an attribute check while nothing failed)."""

    __slots__ = ("_failed", "_log", "_recovered", "failing")

    def __init__(self, log: logging.Logger, store: str) -> None:
        self._log = log
        self._failed = f"{store} failed"
        self._recovered = f"{store} recovered"
        self.failing = False

    def failed(self, error: str, request_id: str | None = None) -> None:
        if self.failing:
            return
        self.failing = True
        extra = (
            {"error": error} if request_id is None else {"error": error, "request_id": request_id}
        )
        self._log.warning(self._failed, extra=extra)

    def answered(self) -> None:
        if self.failing:
            self.failing = False
            self._log.info(self._recovered)
