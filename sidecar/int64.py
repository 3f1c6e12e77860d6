"""The signed 64-bit integer range, [-INT64, INT64), which every number the sidecar passes on stays in.

A client's number reaches places that take an int64 and raise past it: an OTLP int
attribute (protobuf), a quota's reservation in Redis, a config default sent on as a
request's `max_tokens`. One bound, named once, for all of them.
"""

from __future__ import annotations

from typing import Final

INT64: Final = 2**63  # an int64 is at least -INT64 and below INT64
