"""The socket helpers tests build on: ports handed to servers that bind them later."""

from __future__ import annotations

import random

import pytest

from tests.support import sockets


def test_free_ports_are_never_handed_out_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server told two picks (listener and admin) must get two ports, even when the random
    pick repeats: the first is not bound yet, so only the record of it tells them apart."""
    picks = iter([20001, 20001, 20001, 20002])

    monkeypatch.setattr(random, "randint", lambda _low, _high: next(picks))
    monkeypatch.setattr(sockets, "_HANDED_OUT", set())
    monkeypatch.setattr(sockets, "_ephemeral_range", lambda: (32768, 60999))
    assert [sockets.free_port(), sockets.free_port()] == [20001, 20002]
