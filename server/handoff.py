"""What handing a batch to the batcher's worker thread costs: measured once per process, not assumed.

A batch the event loop runs itself holds the loop for its whole run: no new call is taken from gRPC meanwhile
(the loop takes them one pass at a time), so calls wait in gRPC's core, where admission.py cannot see them or
shed them. A batch on the worker leaves the loop free, at the cost of a round trip to the thread and back. So
the loop runs a batch itself only when that takes no longer than the round trip would (the default
`--inline-budget-us auto`): tens of microseconds, whatever the model. Longer inline budgets serve more calls/s
on two cores but let an overload queue up unseen (BENCHMARKS.md, "Serving"; tests/server/test_hostile.py's
overload test fails with 2,000 us).
"""

from __future__ import annotations

import functools
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

SAMPLES = 200


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
