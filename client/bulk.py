"""Bulk work: thousands of images through a server that takes at most so many rows per call.

One engine (`results`) for encode_many, reconstruct_many and score_many and the client commands: it reads the
items (image files, .npy arrays, arrays) a bounded amount ahead of the calls, cuts them into chunks of the rows one
call may carry (the limits GetModelInfo reports), keeps up to `concurrency` calls in flight on threads (a blocking
gRPC call releases the GIL, so reading the next files overlaps the calls), yields each chunk's result in input
order, and retries a call the server refused for load (RESOURCE_EXHAUSTED) or while it drains or restarts
(UNAVAILABLE), with bounded exponential backoff and jitter, never past the overall deadline.
"""

from __future__ import annotations

import collections
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from vaeserve.errors import VaeserveError

from .images import LIGHT, ImageError, as_batch, fit, read_file

# Calls in flight. Measured on the 2-core development machine (client and server sharing it), 50,000 8x8 images
# in calls of 256 rows: about 150k images/s with 1 call in flight, 250k with 2 or 4, no steady gain at 8 or 16
# (runs varied by +-30%). Two keep the server busy while a response is read; four leave headroom for a server on
# more cores or a longer network, and more only hold more chunks in memory.
DEFAULT_CONCURRENCY = 4
MAX_CONCURRENCY = 64
RETRIES = 12  # attempts after the first; with the backoff below about 15-30 s, what a server restart takes
BACKOFF_S = 0.05  # the first retry's wait; doubled each retry up to BACKOFF_CAP_S
BACKOFF_CAP_S = 5.0
RETRYABLE = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
FRAMING = 64 << 10  # bytes of a message besides its tensors' data (shapes, field tags), generously
SEED_MODULUS = 1 << 64  # the proto's uint64


def backoff(attempt: int) -> float:
    """Seconds to wait before retry `attempt` (0 first): exponential, capped, with "equal jitter" (half fixed,
    half random) so clients refused together do not all come back together, yet each waits long enough to
    outlast a restart."""
    step = min(BACKOFF_CAP_S, BACKOFF_S * 2**attempt)
    return step / 2 + random.uniform(0, step / 2)


def call_with_retry(client: Any, call: Any, retries: int, end: float | None) -> Any:
    """client._run(call), retried on RESOURCE_EXHAUSTED and UNAVAILABLE at most `retries` times; each attempt's
    deadline is the client's timeout cut to what is left before `end` (time.monotonic()), and no retry is begun
    whose wait would end after `end`: the last error is raised instead."""
    for attempt in range(retries + 1):
        timeout = client.timeout
        if end is not None:
            left = end - time.monotonic()
            if left <= 0:
                raise VaeserveError("deadline: the overall deadline passed before this call could be made")
            timeout = left if timeout is None else min(timeout, left)
        try:
            return client._run(call, timeout=timeout)
        except grpc.RpcError as exc:
            wait = backoff(attempt)
            late = end is not None and time.monotonic() + wait >= end
            if exc.code() not in RETRYABLE or attempt == retries or late:
                raise
            time.sleep(wait)
    raise AssertionError("unreachable: the last attempt returns or raises")


@dataclass
class Chunk:
    """The rows of one call, and where each came from (a file, `file[i]` for a .npy file's rows, `item i`)."""

    images: np.ndarray
    sources: list[str]


@dataclass
class Reader:
    """Turns items into rows of the model's input, counting what it converted and what it skipped.

    Image files travel as UINT8 (a quarter of the bytes; they are 8-bit anyway), .npy files and float arrays as
    float32, uint8 arrays as they are. skip_unreadable: a file or array that cannot be read is recorded in
    `skipped` and left out instead of raising ImageError.
    """

    image_shape: Sequence[int]
    resize: bool = True
    invert: bool = False
    hint_invert: bool = True
    skip_unreadable: bool = False
    notes: dict[str, list[str]] = field(default_factory=dict)  # what was done -> the sources it was done to
    skipped: list[str] = field(default_factory=list)  # the errors of the items left out

    def rows(self, items: Iterable[Any]) -> Iterator[tuple[np.ndarray, list[str]]]:
        for i, item in enumerate(items):
            try:
                images, note, source = self._read(i, item)
            except ImageError as exc:
                if not self.skip_unreadable:
                    raise
                self.skipped.append(str(exc))
                continue
            if note:
                self.notes.setdefault(note, []).append(source)
            yield images, [source] if len(images) == 1 else [f"{source}[{j}]" for j in range(len(images))]

    def _read(self, i: int, item: Any) -> tuple[np.ndarray, str, str]:
        options = {"resize": self.resize, "invert": self.invert, "hint_invert": self.hint_invert}
        if isinstance(item, str | Path):
            images, note = read_file(Path(item), self.image_shape, **options)
            eight_bit = Path(item).suffix.lower() != ".npy"
            source = str(item)
        else:
            array = np.asarray(item)
            eight_bit, source = array.dtype == np.uint8, f"item {i}"
            if (
                eight_bit
                and array.ndim in (3, 4)
                and array.shape[-3:] == tuple(self.image_shape)
                and not (self.invert or (self.hint_invert and array.mean() > LIGHT * 255))
            ):  # already what the model takes, with nothing to say about it: sent as it is
                return array.reshape(-1, *self.image_shape), "", source
            images, note = fit(as_batch(array, source), self.image_shape, source, **options)
        return (np.rint(images * 255).astype(np.uint8) if eight_bit else images), note, source

    def summary(self) -> list[str]:
        """One line per kind of conversion, with its count ("4,998 images: converted: resized 28x28 -> 8x8")."""
        return [f"{len(sources):,} image(s): {note}" for note, sources in self.notes.items()]


def chunks(rows: Iterable[tuple[np.ndarray, list[str]]], size: int) -> Iterator[Chunk]:
    """Rows regrouped into chunks of `size` (the last one smaller); an item bigger than a chunk is cut."""
    parts: list[np.ndarray] = []
    sources: list[str] = []
    for images, names in rows:
        while len(images):
            take = min(size - len(sources), len(images))
            parts.append(images[:take])
            sources += names[:take]
            images, names = images[take:], names[take:]
            if len(sources) == size:
                yield _chunk(parts, sources)
                parts, sources = [], []
    if sources:
        yield _chunk(parts, sources)


def _chunk(parts: list[np.ndarray], sources: list[str]) -> Chunk:
    if any(p.dtype != np.uint8 for p in parts):  # mixed: one float32 tensor, uint8 rows scaled as the server would
        parts = [p.astype(np.float32) / 255 if p.dtype == np.uint8 else p for p in parts]
    return Chunk(np.concatenate(parts), sources)


def rows_per_call(info: Any, max_message_bytes: int, k: int = 1) -> int:
    """The most rows one call may carry: the server's max_num_samples, fewer when the client's own message limit
    cannot hold that many rows (float32 images and latents, or the encoder's three outputs: what the server
    sizes its own message limit by), and for Score (k importance samples per row) at most max_num_samples // k
    rows, so one call runs no more decoder rows than the biggest Encode."""
    c, h, w = info.image_shape
    row_bytes = 4 * max(c * h * w + info.latent_dim, 3 * info.latent_dim)
    rows = min(info.max_num_samples, max(1, (max_message_bytes - FRAMING) // row_bytes))
    return max(1, min(rows, info.max_num_samples // k))


# What one chunk is: run(call) (a call with retries), the chunk's index (for seeds), its images -> its result.
Work = Callable[[Callable[[Any], Any], int, np.ndarray], Any]


def results(
    client: Any,
    chunked: Iterable[Chunk],
    work: Work,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    retries: int = RETRIES,
    deadline: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[Chunk, Any]]:
    """(chunk, its result) in input order, at most `concurrency` calls in flight and as many chunks read; a
    failed call raises at its turn. deadline: seconds for the whole run (None: each call's own timeout only).
    progress(rows) is called as each chunk's result is handed over."""
    check_bulk_arguments(concurrency, retries, deadline)
    end = None if deadline is None else time.monotonic() + deadline

    def run(call: Any) -> Any:
        return call_with_retry(client, call, retries, end)

    pending: collections.deque[tuple[Chunk, Future]] = collections.deque()
    pool = ThreadPoolExecutor(concurrency, thread_name_prefix="vaeserve-bulk")
    try:
        for i, chunk in enumerate(chunked):
            pending.append((chunk, pool.submit(work, run, i, chunk.images)))
            if len(pending) == concurrency:  # read no further ahead than the calls in flight
                yield _handed(pending, progress)
        while pending:
            yield _handed(pending, progress)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a consumer that stops early leaves no call running


def _handed(pending: collections.deque, progress: Callable[[int], None] | None) -> tuple[Chunk, Any]:
    chunk, future = pending.popleft()
    result = future.result()
    if progress is not None:
        progress(len(chunk.sources))
    return chunk, result


def check_bulk_arguments(concurrency: Any, retries: Any, deadline: Any) -> None:
    """Refuses, naming the argument, a concurrency outside [1, MAX_CONCURRENCY], a negative or huge retry count,
    or a deadline that is not a positive finite number of seconds."""
    whole = (int, np.integer)
    if isinstance(concurrency, bool) or not isinstance(concurrency, whole) or not 1 <= concurrency <= MAX_CONCURRENCY:
        raise VaeserveError(f"concurrency: expected a whole number in [1, {MAX_CONCURRENCY}], got {concurrency!r}")
    if isinstance(retries, bool) or not isinstance(retries, whole) or not 0 <= retries <= 1000:
        raise VaeserveError(f"retries: expected a whole number in [0, 1000], got {retries!r}")
    if deadline is not None and not (isinstance(deadline, int | float) and 0 < deadline < float("inf")):
        raise VaeserveError(f"deadline: expected seconds > 0 (or None), got {deadline!r}")


def chunk_seed(seed: int | None, index: int) -> int | None:
    """Chunk `index`'s seed: seed + index, so chunks draw different noise and a run is reproducible for the same
    chunking (the same server limits)."""
    return None if seed is None else (seed + index) % SEED_MODULUS


def split_rows(result: Any, n: int) -> Iterator[Any]:
    """A chunk's result as one result per row: a tuple of arrays -> tuples of rows, a dict of arrays -> dicts of
    values."""
    if isinstance(result, dict):
        return ({name: values[j] for name, values in result.items()} for j in range(n))
    return zip(*result, strict=True)
