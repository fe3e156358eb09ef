"""memory.py: a Sample(1024)-sized response no longer page-faults its megabytes in on every call; the objects
alive once the server is ready are out of the garbage collector's walks, and a freed version's cycles still go
(with one full collection only where a cycle held it)."""

from __future__ import annotations

import subprocess
import sys

from vaeserve.server.memory import YOUNG_THRESHOLD, keep_large_buffers

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


# In a process of its own: freezing is for a whole process, and pytest's must keep collecting. Prints one line per
# step: the frozen count, whether an object is still alive, whether release() collected.
FREEZING = """
import gc, weakref
from vaeserve.server.memory import freeze_heap, release

class Node:
    pass

gc.disable()  # no automatic collections: those counted are the script's and release()'s own
collections = []
gc.callbacks.append(lambda phase, info: phase == "stop" and collections.append(info["generation"]))

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)

lone = Node()
held = weakref.ref(lone)
del lone
print(release([held]), gc.get_freeze_count(), collections)  # freed by reference counting: nothing to collect
garbage = cycle()  # already unreachable: the collection before freezing frees it
freeze_heap()
print(gc.get_freeze_count() > 0, garbage() is None, gc.get_threshold()[0])
node, lone = Node(), Node()
node.itself = node
version, acyclic = weakref.ref(node), weakref.ref(lone)
freeze_heap()  # frozen while alive, as a served version's objects are
collections.clear()
del lone
print(release([acyclic]), acyclic() is None, collections)  # frozen objects still go with their last reference
del node
gc.collect()
print(version() is not None)  # frozen: ordinary collections leave it
collections.clear()
print(release([acyclic, version]), gc.get_freeze_count() > 0, version() is None, collections)  # a cycle
gc.unfreeze()
unfrozen = cycle()
print(release([unfrozen]), gc.get_freeze_count(), unfrozen() is None)  # nothing frozen: collected, none frozen
"""


def test_freezing_leaves_live_objects_out_and_release_frees_a_dropped_versions_cycles_only_where_there_are() -> None:
    out = subprocess.run([sys.executable, "-c", FREEZING], capture_output=True, text=True, timeout=60, check=True)
    nothing, frozen, acyclic, kept, cyclic, unfrozen = out.stdout.splitlines()
    assert nothing == "True 0 []", "released by reference counting: no collection, nothing frozen"
    assert frozen == f"True True {YOUNG_THRESHOLD}", "garbage alive before freezing must be collected, not frozen"
    assert acyclic == "True True []", "a frozen version without cycles goes with its references, uncollected"
    assert kept == "True"
    assert cyclic == "False True True [2]", "a cycle frozen while alive must be freed by one full collection, refrozen"
    assert unfrozen == "False 0 True", "a cycle in a heap never frozen is collected, and nothing is frozen by it"
