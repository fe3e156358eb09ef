"""How long a batch may run on the event loop (`--inline-budget-us auto`): the longer of a bound on how long one
batch may hold the loop and what handing it to the worker thread costs, measured once per process.

A batch the event loop runs itself holds the loop for its whole run: no new call is taken from gRPC meanwhile
(the loop takes them one pass at a time), so calls wait in gRPC's core, where admission.py cannot see them or
shed them. So one batch holds the loop for at most LOOP_HOLD_S: a bound on how late admission sees an overload,
the same whatever the model (tests/server/test_hostile.py's overload test sheds with it and fails with 2,000 us).
A batch on the worker leaves the loop free, at the cost of a round trip to the thread and back, and under load
of passing the GIL between the loop and the worker, which the idle round trip does not show: with the round
trip alone (tens of microseconds) as the budget, the default model's Encode(1) at 32 clients lost 15-20% of its
calls/s to LOOP_HOLD_S (BENCHMARKS.md, "Serving", the rows of vaeserve before 2dccbfd). Where the round trip is
longer than LOOP_HOLD_S, the loop runs what fits in it: handing it over would cost more. Which rows fit is the
model's: predicted from its warm-up timings (runtime.Cost).
"""

from __future__ import annotations

import functools
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

SAMPLES = 200
LOOP_HOLD_S = 200e-6  # the longest one batch holds the event loop by default


def auto_inline_budget_s() -> float:
    """`--inline-budget-us auto`: LOOP_HOLD_S, or the round trip to the worker where that is longer."""
    return max(LOOP_HOLD_S, worker_handoff_s())


@functools.cache
def worker_handoff_s() -> float:
    """The median round trip of a no-op to a fresh single-thread executor and back (its first call, which
    starts the thread, left out)."""
    with ThreadPoolExecutor(1, thread_name_prefix="handoff-probe") as pool:
        pool.submit(int).result()
        times = []
        for _ in range(SAMPLES):
            start = time.perf_counter()
            pool.submit(int).result()
            times.append(time.perf_counter() - start)
    return statistics.median(times)
