"""keep_large_buffers: a Sample(1024)-sized response no longer page-faults its megabytes in on every call."""

from __future__ import annotations

import subprocess
import sys

from vaeserve.server.memory import keep_large_buffers

# Builds and serializes a 28x28 Sample(1024) response (3.2 MB of images) 20 times; prints minor faults per call.
SCRIPT = """
import resource, sys
import numpy as np
from vaeserve.protos.vae.v1 import vae_pb2
from vaeserve.server.memory import keep_large_buffers

if sys.argv[1] == "keep":
    assert keep_large_buffers()
images = np.random.default_rng(0).random((1024, 1, 28, 28), dtype=np.float32)

def respond():
    tensor = vae_pb2.Tensor(shape=images.shape, data=images.tobytes())
    return vae_pb2.SampleResponse(images=tensor).SerializeToString()

respond()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    respond()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def faults_per_call(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=60, check=True)
    return float(out.stdout)


def test_large_responses_reuse_heap_memory_instead_of_faulting_it_in() -> None:
    default, kept = faults_per_call("default"), faults_per_call("keep")
    pages = 1024 * 28 * 28 * 4 / 4096  # one copy of the images
    assert default > pages, "glibc's defaults no longer map large buffers per call: revisit memory.py"
    assert kept < pages / 10, f"{kept} minor faults per call with large buffers kept ({default} without)"


def test_it_is_applied_on_glibc() -> None:
    assert keep_large_buffers()  # this test suite runs on glibc Linux (CI and the images)
