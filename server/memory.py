"""glibc malloc settings for a server whose responses are megabytes: keep large buffers for reuse.

glibc serves allocations over its mmap threshold with fresh mmap'd pages and unmaps them on free, so every
large buffer a call makes (onnxruntime's output, the response's bytes, the serialized message) page-faults
its whole size in again, which for megabyte responses costs more than building them (BENCHMARKS.md, "Design
measurements"). The cost is that freed memory up to the trim threshold stays with the process instead of
going back to the OS.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 256 << 20  # free heap kept before any is returned to the OS


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
