"""Bulk work (client/bulk.py) through a real server with a small --max-num-samples, so 10,000 images take many
calls: the results come back in input order, the input is read a bounded amount ahead, a server restarting
mid-run costs nothing but time, and retries are bounded."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from tests.harness import ServerProcess, free_port, serving, vaeserve_process, wait_until
from vaeserve.client import bulk
from vaeserve.client.api import VaeClient
from vaeserve.errors import VaeserveError

ROWS = 64  # the server's --max-num-samples: 10,000 images are 157 calls
N = 10_000


@pytest.fixture(scope="module")
def small_server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("bulk-server") / "serve.log"
    with serving(model_repo, log, "--max-num-samples", str(ROWS), "--max-batch-size", "32") as s:
        yield s


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """N distinct uint8 8x8 digits-shaped images."""
    return np.random.default_rng(0).integers(0, 256, (N, 1, 8, 8), dtype=np.uint8)


@pytest.fixture(scope="module")
def reference(small_server: ServerProcess, images: np.ndarray) -> np.ndarray:
    """The means of `images`, encoded a call at a time."""
    with VaeClient(small_server.target) as c:
        return np.concatenate([c.encode(images[i : i + ROWS])[0] for i in range(0, N, ROWS)])


def test_ten_thousand_pngs_are_split_into_calls_and_come_back_in_order(
    small_server: ServerProcess, images: np.ndarray, reference: np.ndarray, tmp_path: Path
) -> None:
    paths = [tmp_path / f"{i:05d}.png" for i in range(N)]
    for path, image in zip(paths, images, strict=True):
        Image.fromarray(image[0]).save(path)
    with VaeClient(small_server.target) as c:
        rows = list(c.encode_many(paths, seed=7))
    assert len(rows) == N
    means = np.stack([mean for mean, _, _ in rows])
    np.testing.assert_allclose(means, reference, atol=1e-5)
    # Call i draws with seed + i: the second call's latents are Encode(second chunk, seed 8)'s.
    with VaeClient(small_server.target) as c:
        _, _, second = c.encode(images[ROWS : 2 * ROWS], seed=8)
    np.testing.assert_array_equal(np.stack([z for _, _, z in rows[ROWS : 2 * ROWS]]), second)


def test_a_stream_is_read_a_bounded_amount_ahead(
    small_server: ServerProcess, images: np.ndarray, reference: np.ndarray
) -> None:
    taken = 0

    def stream() -> Iterator[np.ndarray]:
        nonlocal taken
        for image in images:
            taken += 1
            yield image

    concurrency = 3
    with VaeClient(small_server.target) as c:
        results = c.encode_many(stream(), concurrency=concurrency)
        first = next(results)
        # The calls in flight, and the chunk being filled: never the whole stream.
        assert taken <= (concurrency + 1) * ROWS
        rest = list(results)
    np.testing.assert_allclose(np.stack([m for m, _, _ in [first, *rest]]), reference, atol=1e-5)


def test_score_and_reconstruct_many_match_the_single_calls(small_server: ServerProcess, images: np.ndarray) -> None:
    some = images[:300]
    with VaeClient(small_server.target) as c:
        scored = list(c.score_many(some, k=10, seed=1))  # ROWS // 10 = 6 images per call
        direct = c.score(some[:6], k=10, seed=1)
        reconstructed = list(c.reconstruct_many(some, mean=True, uint8=True))
        means = c.encode(some[:ROWS])[0]
    assert len(scored) == 300 and len(reconstructed) == 300
    assert [s["log_likelihood"] for s in scored[:6]] == pytest.approx(direct["log_likelihood"].tolist(), abs=1e-4)
    np.testing.assert_allclose(np.stack([z for _, z in reconstructed[:ROWS]]), means, atol=1e-5)


def test_a_server_restarting_mid_run_costs_time_not_rows(
    model_repo: Path, images: np.ndarray, reference: np.ndarray, tmp_path: Path
) -> None:
    port = free_port()
    flags = ("--max-num-samples", str(ROWS), "--max-batch-size", "32")
    first = vaeserve_process(model_repo, tmp_path / "first.log", *flags, port=port).start()
    got: list = []
    started, stopped = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def consume() -> None:
        try:
            with VaeClient(first.target, timeout=30) as c:
                for row in c.encode_many(images, concurrency=2, retries=60, deadline=240):
                    got.append(row)
                    if len(got) == 1:
                        started.set()
                        stopped.wait(120)  # the rest is asked of a server that is gone, then of its successor
        except BaseException as exc:  # reported by the test thread
            failure.append(exc)

    consumer = threading.Thread(target=consume)
    consumer.start()
    try:
        wait_until(started.is_set, "the first result", timeout=120)
        assert first.stop() == 0, first.output()
        stopped.set()
        with serving(model_repo, tmp_path / "second.log", *flags, port=port):
            consumer.join(240)
            assert not consumer.is_alive(), "encode_many did not finish after the restart"
    finally:
        stopped.set()
        first.stop()
        consumer.join(240)
    assert not failure, failure
    assert len(got) == N
    np.testing.assert_allclose(np.stack([m for m, _, _ in got]), reference, atol=1e-5)


def test_retries_are_bounded_in_count_and_by_the_deadline() -> None:
    nothing = f"127.0.0.1:{free_port()}"  # nobody listens: every call is UNAVAILABLE
    with VaeClient(nothing, timeout=5) as c:
        with pytest.raises(grpc.RpcError) as raised:
            list(c.encode_many(np.zeros((1, 1, 8, 8), np.uint8), retries=2))
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        # A thousand retries allowed, but none begun that would end after the deadline.
        with pytest.raises((grpc.RpcError, VaeserveError)):
            list(c.encode_many(np.zeros((1, 1, 8, 8), np.uint8), retries=1000, deadline=1.0))


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    for attempt in range(40):
        step = min(bulk.BACKOFF_CAP_S, bulk.BACKOFF_S * 2**attempt)
        assert step / 2 <= bulk.backoff(attempt) <= step


@pytest.mark.parametrize(
    "argument",
    [
        {"concurrency": 0},
        {"concurrency": -1},
        {"concurrency": 10**9},
        {"concurrency": True},
        {"concurrency": "4"},
        {"concurrency": math.nan},
        {"retries": -1},
        {"retries": 10**9},
        {"deadline": 0},
        {"deadline": -5},
        {"deadline": math.nan},
        {"deadline": math.inf},
        {"deadline": "soon"},
    ],
)
def test_hostile_bulk_arguments_are_refused_by_name(argument: dict) -> None:
    # Refused before any call (none would be answered there).
    with VaeClient("127.0.0.1:1") as c, pytest.raises(VaeserveError, match=next(iter(argument))):
        c.encode_many([], **argument)


def test_uint8_arrays_of_the_model_shape_are_sent_as_they_are() -> None:
    """The bulk reader's fast path (no conversion for uint8 rows the model takes) gives the same rows as the
    conversion would, and still hints at mostly light images."""
    rng = np.random.default_rng(3)
    dark = [rng.integers(0, 100, (1, 8, 8), dtype=np.uint8) for _ in range(20)]
    reader = bulk.Reader((1, 8, 8))
    rows = np.concatenate([images for images, _ in reader.rows(dark)])
    converted = np.concatenate([images for images, _ in bulk.Reader((1, 8, 8), hint_invert=False).rows(
        [a.astype(np.float32) / 255 for a in dark])])  # fmt: skip
    np.testing.assert_array_equal(rows, np.stack(dark))
    np.testing.assert_array_equal(rows, np.rint(converted * 255).astype(np.uint8))
    light = bulk.Reader((1, 8, 8))
    list(light.rows([np.full((1, 8, 8), 250, np.uint8)]))
    assert any("mostly light" in note for note in light.notes)
