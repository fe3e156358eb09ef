"""What handing a batch to the batcher's worker thread costs while the event loop is busy: measured, not assumed.

A batch on the worker needs the GIL to start and again to return its outputs after onnxruntime releases it.
While the event loop runs Python (every request it reads is Python), the worker gets the GIL only when the loop
drops it: in CPython, when the worker has asked for it for a switch interval (sys.getswitchinterval(), 5 ms by
default). So under load a batch on the worker finishes at least one hand-off later than its run: a batch predicted
to run within one hand-off is done sooner on the loop itself (batcher.py), whatever the model.
"""

from __future__ import annotations

import functools
import statistics
import threading
import time

NAP_S = 1e-3  # a blocking call that releases the GIL, as onnxruntime's run does
SAMPLES = 5


@functools.cache
def gil_handoff_s() -> float:
    """The median delay between a thread's GIL-releasing call returning and that thread running Python again,
    while another thread runs Python without pause (measured once per process, in about SAMPLES hand-offs)."""
    stop = threading.Event()

    def busy() -> None:  # pure Python, as an event loop reading requests is
        while not stop.is_set():
            pass

    spinner = threading.Thread(target=busy, name="handoff-probe", daemon=True)
    spinner.start()
    delays = []
    try:
        for _ in range(SAMPLES):
            start = time.perf_counter()
            time.sleep(NAP_S)
            delays.append(time.perf_counter() - start - NAP_S)
    finally:
        stop.set()
        spinner.join()
    return max(0.0, statistics.median(delays))
