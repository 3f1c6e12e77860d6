"""Interpreter settings for serving: the frozen startup heap."""

from __future__ import annotations

import gc
import sys
import weakref
from collections.abc import Iterator

import pytest

from sidecar.interpreter import FIRST_GENERATION, tune_interpreter


@pytest.fixture
def interpreter_restored() -> Iterator[None]:
    """The test process's switch interval, heap and collector thresholds as they were."""
    interval = sys.getswitchinterval()
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    assert sys.getswitchinterval() == interval  # left at the interpreter's own


class _Node:
    """An object that can sit in a reference cycle and be watched through a weakref."""

    peer: object = None


def test_tune_interpreter_freezes_the_heap(
    interpreter_restored: None,
) -> None:
    garbage = _Node()
    garbage.peer = garbage  # a cycle: only the collector frees it
    freed = weakref.ref(garbage)
    kept = _Node()
    del garbage
    tune_interpreter()
    assert freed() is None  # collected first, not frozen for the life of the process
    assert gc.get_freeze_count() > 0
    assert not any(obj is kept for obj in gc.get_objects())  # no collection walks it again
    after = _Node()
    assert any(obj is after for obj in gc.get_objects())  # what serving allocates is collected


def test_tune_interpreter_collects_the_first_generation_less_often(
    interpreter_restored: None,
) -> None:
    older = gc.get_threshold()[1:]
    tune_interpreter()
    assert gc.get_threshold() == (FIRST_GENERATION, *older)  # the older generations as they were
