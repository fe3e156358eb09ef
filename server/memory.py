"""How the server process keeps memory: glibc's large buffers reused, Python's long-lived objects frozen.

glibc serves allocations over its mmap threshold with fresh mmap'd pages and unmaps them on free, so every
large buffer a call makes (onnxruntime's output, the response's bytes, the serialized message) page-faults
its whole size in again, which for megabyte responses costs more than building them (BENCHMARKS.md, "Design
measurements"). The cost is that freed memory up to the trim threshold stays with the process instead of
going back to the OS.

Python's garbage collector walks every object it tracks on each full collection: a serving process's ~44,000
(modules, gRPC, numpy, protobuf, the served versions) at up to 15 ms a time, several times a second under load,
since calls in flight live long enough to be promoted to the oldest generation. Those objects live as long as
the process or their version, so once the server is ready they are frozen (gc.freeze) and collections walk
only what calls create; a freed version goes by reference counting (it holds no reference cycle: `release`
checks, and collects only where one did). And the youngest generation is collected every YOUNG_THRESHOLD
new objects instead of Python's 700: each collection walks the objects of the calls in flight (most of a call's
objects are freed by reference counting long before), so collecting less often walks about as much each time,
many times less often. BENCHMARKS.md, "Design measurements", has both: the p99 and 8% of a small call's CPU,
then 3-6% more.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import weakref
from collections.abc import Iterable

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 256 << 20  # free heap kept before any is returned to the OS
YOUNG_THRESHOLD = 20_000  # new objects between collections of the youngest generation (gc's threshold0)


@functools.cache  # a CDLL and its function types form reference cycles: one per process, not one per trim
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def trim() -> bool:
    """Returns the heap's free memory to the OS (glibc's malloc_trim): after a model version is freed, its
    megabytes would otherwise stay with the process up to the trim threshold. False where libc is not glibc."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = (ctypes.c_size_t,), ctypes.c_int
    return bool(libc.malloc_trim(0))


def keep_large_buffers() -> bool:
    """Raises glibc's mmap and trim thresholds; False (and nothing changed) where libc is not glibc."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):  # not glibc (musl, macOS): leave the allocator alone
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success. The mmap threshold goes first: setting it also stops glibc from adjusting
    # both thresholds by itself.
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def freeze_heap() -> int:
    """One full collection, then every object still alive is left out of later collections (gc.freeze) and the
    youngest generation is collected every YOUNG_THRESHOLD new objects; how many objects are frozen."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    return gc.get_freeze_count()


def release(held: Iterable[weakref.ref]) -> bool:
    """After the last references to a model version are dropped: True where reference counting alone freed all
    that `held` refers to (the rule: a version holds no reference cycle). Otherwise a cycle holds some of it,
    frozen or not: the frozen objects are made collectable for one full collection, which frees it, and the rest
    is frozen again (nothing frozen where none was: a process that is not `vaeserve serve`); False. That
    collection walks the whole heap on the event loop (14-55 ms in a serving process), so it is not paid
    where nothing needs it: every swap paid it once, and the p99 of calls during swaps went from 1.6x to
    2.0-2.4x the steady p99 (BENCHMARKS.md, "Model versions going live while serving")."""
    if all(ref() is None for ref in held):
        return True
    if gc.get_freeze_count():
        gc.unfreeze()
        freeze_heap()  # its one full collection frees the cycle before the rest is frozen again
    else:
        gc.collect()
    return False
