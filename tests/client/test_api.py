"""The Python client as the README documents it: `from vaeserve import VaeClient`, the README's example run as
written, interpolation (straight and spherical), the posterior-mean reconstruction, the asyncio client, and the
version that answered across a swap."""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

import vaeserve
from tests.conftest import run_cli
from tests.harness import ROOT, ServerProcess, serving
from vaeserve.client.api import AsyncVaeClient, VaeClient
from vaeserve.client.pictures import write_grid
from vaeserve.errors import VaeserveError
from vaeserve.protos.inference import grpc_service_pb2 as pb
from vaeserve.protos.inference import grpc_service_pb2_grpc as pb_grpc


def digits(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32)


def test_the_stable_import_path_loads_the_client_only_when_asked() -> None:
    assert vaeserve.VaeClient is VaeClient and vaeserve.AsyncVaeClient is AsyncVaeClient
    assert vaeserve.write_grid is write_grid
    assert set(vaeserve.__all__) == {"VaeClient", "AsyncVaeClient", "read_images", "write_grid", "__version__"}
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        vaeserve.Nope  # noqa: B018
    # `import vaeserve` (and so the CLI's start) stays free of grpc until a client is used.
    code = "import sys, vaeserve; assert 'grpc' not in sys.modules; vaeserve.VaeClient; assert 'grpc' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_readme_example_runs_as_written(server: ServerProcess, tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    (example,) = re.findall(r"<!-- example: client -->\n```python\n(.*?)```", readme, re.S)
    example = example.replace("localhost:50051", server.target)
    ran = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, check=True, timeout=120, capture_output=True,
                         text=True)  # fmt: skip
    assert {p.name for p in tmp_path.iterdir()} >= {"samples.png", "recon.png"}
    # What the example's comment says it prints.
    printed = re.search(r"print\(notes\)  # (.*)", example).group(1)
    assert ran.stdout.strip() == printed


def test_interpolate_decodes_a_straight_line_between_the_posterior_means(client: VaeClient) -> None:
    a, b = digits(2)
    images, latents = client.interpolate(a, b, steps=5)
    means = client.encode(np.stack([a, b]))[0]
    assert images.shape == (5, 1, 8, 8) and latents.shape == (5, 8)
    np.testing.assert_allclose(latents[[0, -1]], means, atol=1e-6)
    np.testing.assert_allclose(latents[2], means.mean(0), atol=1e-6)
    np.testing.assert_array_equal(images, client.decode(latents))
    # Latents as ends, and [1, C, H, W] images, work the same way.
    again, same = client.interpolate(means[0], means[1], steps=5)
    np.testing.assert_allclose(same, latents, atol=1e-6)
    np.testing.assert_allclose(again, images, atol=1e-5)
    assert client.interpolate(a[None], b[None], steps=2)[1].shape == (2, 8)


def test_spherical_interpolation_follows_the_arc(client: VaeClient) -> None:
    a, b = np.zeros(8, np.float32), np.zeros(8, np.float32)
    a[0], b[1] = 3.0, 3.0
    _, path = client.interpolate(a, b, steps=9, spherical=True)
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), 3.0, rtol=1e-6)  # on the circle, not the chord
    np.testing.assert_allclose(path[4, :2], [3 / math.sqrt(2)] * 2, rtol=1e-6)
    np.testing.assert_allclose(path[[0, -1]], [a, b], atol=1e-6)
    # Parallel or zero ends have no arc: the straight line.
    for end in (2 * a, 0 * a):
        np.testing.assert_allclose(client.interpolate(a, end, 3, spherical=True)[1], client.interpolate(a, end, 3)[1],
                                   atol=1e-6)  # fmt: skip


@pytest.mark.parametrize("steps", [1, 0, -3, 2**40, 2.5, math.nan, True, "8", None])
def test_interpolation_steps_are_bounded(client: VaeClient, steps: object) -> None:
    import grpc

    a, b = np.zeros(8), np.ones(8)
    if isinstance(steps, int) and not isinstance(steps, bool) and 2 <= steps < 2**32:
        with pytest.raises(grpc.RpcError, match=re.escape("steps: expected 2 <= steps <= ")):
            client.interpolate(a, b, steps)  # the server's bound
        return
    with pytest.raises(VaeserveError, match=rf"steps: expected a whole number >= 2, got {re.escape(repr(steps))}"):
        client.interpolate(a, b, steps)  # type: ignore[arg-type]


def test_interpolation_ends_must_match(client: VaeClient) -> None:
    for a, b in ((np.zeros(8), np.zeros(7)), (np.zeros((2, 8)), np.zeros((2, 8))), (np.zeros(0), np.zeros(0)),
                 (digits(2), digits(2))):  # fmt: skip
        with pytest.raises(VaeserveError, match="interpolate: expected two latents"):
            client.interpolate(a, b)


def test_reconstruct_mean_decodes_the_posterior_mean(client: VaeClient) -> None:
    images = digits(3)
    reconstructed, means = client.reconstruct(images, mean=True)
    np.testing.assert_array_equal(means, client.encode(images, seed=1)[0])
    np.testing.assert_array_equal(reconstructed, client.decode(means))
    np.testing.assert_array_equal(client.reconstruct(images, mean=True)[0], reconstructed)
    with pytest.raises(VaeserveError, match="seed: the posterior mean is decoded as it is"):
        client.reconstruct(images, seed=0, mean=True)


def test_the_async_client_answers_as_the_blocking_one(server: ServerProcess, client: VaeClient) -> None:
    a, b = digits(2)

    async def calls() -> tuple:
        async with AsyncVaeClient(server.target, timeout=30) as aio:
            return await asyncio.gather(
                aio.sample(4, seed=3),
                aio.encode(a[None], seed=3),
                aio.decode(np.zeros((2, 8), np.float32)),
                aio.reconstruct(a[None], mean=True),
                aio.interpolate(a, b, steps=4, spherical=True),
                aio.info(),
            )

    sample, encoded, decoded, reconstructed, interpolated, info = asyncio.run(calls())
    for got, expected in (
        (sample, client.sample(4, seed=3)),
        (encoded, client.encode(a[None], seed=3)),
        ((decoded,), (client.decode(np.zeros((2, 8), np.float32)),)),
        (reconstructed, client.reconstruct(a[None], mean=True)),
        (interpolated, client.interpolate(a, b, steps=4, spherical=True)),
    ):
        for x, y in zip(got, expected, strict=True):
            np.testing.assert_array_equal(x, y)
    assert info == client.info()


def test_the_client_says_which_version_answered_and_info_lists_the_served_ones(
    model_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "models"
    shutil.copytree(model_repo / "vae" / "1", repo / "vae" / "1")
    flags = ("--model-control", "explicit", "--version-policy", "latest:2")
    with serving(repo, tmp_path / "serve.log", *flags) as server, VaeClient(server.target, timeout=30) as client:
        assert client.model_version == 0  # no call answered yet
        client.encode(digits(1))
        assert client.model_version == 1
        # Version 2 (version 1's graphs renumbered), published by a rename as export does, then loaded.
        staging = repo / "vae" / ".publish-2"
        shutil.copytree(repo / "vae" / "1", staging)
        info = json.loads((staging / "model.json").read_text())
        (staging / "model.json").write_text(json.dumps({**info, "version": 2}))
        staging.rename(repo / "vae" / "2")
        with grpc.insecure_channel(server.target) as channel:
            load = pb.RepositoryModelLoadRequest(model_name="vae")
            pb_grpc.GRPCInferenceServiceStub(channel).RepositoryModelLoad(load, timeout=120)
        client.sample(2, seed=0)
        assert client.model_version == 2  # the newest served answers a call that names no version
        described = client.info()
        assert list(described.served_versions) == [1, 2] and described.version == 2 and client.model_version == 2

        async def decoded_by() -> int:
            async with AsyncVaeClient(server.target, timeout=30) as aio:
                assert aio.model_version == 0
                await aio.decode(np.zeros((1, 8), np.float32))
                return aio.model_version

        assert asyncio.run(decoded_by()) == 2
        run_cli("info", "--target", server.target)
        printed = json.loads(capsys.readouterr().out)
        assert printed["version"] == 2 and printed["served_versions"] == [1, 2]
