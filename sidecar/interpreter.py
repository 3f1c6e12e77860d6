"""Interpreter settings for serving: a frozen startup heap, a larger first GC generation.

Python's switch interval (how long a thread holds the GIL before a waiting one gets
it) stays at its 5 ms default: spans over OTLP/HTTP are encoded on the event loop as
they end and only posted by a thread (`telemetry/loop_spans.py`), the gRPC
exporter's thread hands the GIL over every 16 spans, and a shorter interval measured
more CPU per call (every hand-over costs both threads) for no better
time-to-first-token tail.
"""

from __future__ import annotations

import gc
from typing import Final

# Tracked objects allocated (net) before the first generation is collected (Python's
# default is 700). With 50 calls in flight their objects come and go in waves that
# crossed 700 every ~45 calls: each pass walked the calls in flight and freed nothing (a
# finished call leaves no cycle), 161-238 µs each, 4-6 µs per call. At 2,000: 3 passes
# per 4,000 calls instead of 87-90. Sequential calls reach either threshold about once
# per 2,000 calls.
FIRST_GENERATION: Final = 2000


def tune_interpreter() -> None:
    """Set the process up for serving: a frozen heap, and `FIRST_GENERATION`.

    Call once, after the modules and the config are loaded. What exists by then lives as
    long as the process: once the garbage is collected it moves to the permanent
    generation, and every later full collection walks only what serving allocated (in
    the benchmark config ~10,000 objects instead of ~76,000: ~1.5 ms of CPU instead of
    ~50 ms, a pause every call that meets it waits out). The runtime built later (apps,
    pools, telemetry) stays collectable: a reload replaces it.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(FIRST_GENERATION, *gc.get_threshold()[1:])
