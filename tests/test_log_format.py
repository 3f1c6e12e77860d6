"""The log formats: JSON lines (compact, every value type, exceptions) and text."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from enum import Enum
from typing import Any

import pytest

from sidecar.telemetry import JsonFormatter, log_format
from tests.support.logs import (
    FIELD_SETS,
    plain,
)


def test_json_formatter_handles_exceptions_and_odd_values() -> None:
    logger = logging.getLogger("sidecar.test")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logger.makeRecord(
            "sidecar.test", logging.ERROR, __file__, 1, "failed %s", ("x",),
            exc_info=sys.exc_info(), extra={"odd": object(), "n": 3},
        )  # fmt: skip
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "failed x"
    assert entry["level"] == "ERROR"
    assert entry["n"] == 3
    assert entry["odd"].startswith("<object object")
    assert "ValueError: boom" in entry["exception"]
    assert entry["time"].endswith("Z")


@pytest.mark.parametrize("fields", list(FIELD_SETS.values()), ids=list(FIELD_SETS))
def test_a_line_holds_each_field_in_order_as_json(fields: dict[str, Any]) -> None:
    """Every kind of value a line may carry comes back from the JSON as the value it
    was (a value of no JSON type as its `str`, a date as its ISO form), keys in order."""
    decoded = json.loads(log_format.encode_json(fields))
    assert list(decoded) == [str(k) for k in fields]
    for key, value in fields.items():
        if isinstance(value, datetime):
            assert datetime.fromisoformat(decoded[key]) == value
        elif isinstance(value, Enum):
            assert decoded[key] == value.value
        else:
            assert decoded[key] == plain(value), key


def test_a_line_is_compact_and_what_orjson_refuses_is_still_written() -> None:
    """No spaces between tokens; an integer past 64 bits, a lone surrogate (a name
    decoded with `surrogateescape`) and keys that are not strings are still encoded."""
    assert (
        log_format.encode_json({"a": 1, "b": [1, "x y"], "c": {}}) == '{"a":1,"b":[1,"x y"],"c":{}}'
    )
    refused = {"big": 2**70, "lone": "bad \udcff byte", 3: "three"}
    line = log_format.encode_json(refused)
    assert line.isascii()
    assert json.loads(line) == {"big": 2**70, "lone": "bad \udcff byte", "3": "three"}
