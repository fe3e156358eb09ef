"""A colour model of a folder of pictures, end to end at 3x32x32 and 3x64x64: `vaeserve train --dataset folder`,
export, a real `vaeserve serve`, then both protocols, uint8 on the wire, the client commands and the explorer."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from tests.conftest import run_cli
from tests.harness import ServerProcess, serving
from tests.shapes import write_shapes
from vaeserve.client.api import VaeClient
from vaeserve.client.explore.app import Explorer
from vaeserve.client.images import read_images
from vaeserve.protos.inference import grpc_service_pb2 as oip
from vaeserve.protos.inference import grpc_service_pb2_grpc as oip_grpc

LATENT = 4
PICTURES = 200


@pytest.fixture(scope="module", params=[32, 64], ids=lambda s: f"3x{s}x{s}")
def colour(request, tmp_path_factory) -> Iterator[tuple[int, Path, Path, ServerProcess]]:
    """(size, the folder of shapes, the model repository, a server of it), trained for one epoch."""
    size, root = request.param, tmp_path_factory.mktemp("shapes")
    write_shapes(root / "pictures", PICTURES, size=size)
    run, repo = root / "run", root / "models"
    run_cli("train", "--dataset", "folder", "--data-path", str(root / "pictures"), "--image-size", str(size),
            "--channels", "3", "--latent-dim", str(LATENT), "--epochs", "1", "--batch-size", "32", "--no-report",
            "--out", str(run))  # fmt: skip
    run_cli("export", "--checkpoint", str(run / "best.pt"), "--repo", str(repo), "--name", "vae")
    with serving(repo, root / "serve.log") as server:
        yield size, root / "pictures", repo, server
    assert server.returncode == 0, server.output()


def test_the_library_speaks_colour_both_ways_and_uint8_on_the_wire(colour) -> None:
    size, pictures, repo, server = colour
    files = sorted(pictures.rglob("*.png"))[:6]
    images, _ = read_images(files, (3, size, size))
    with VaeClient(server.target, timeout=60) as client:
        assert list(client.info().image_shape) == [3, size, size]
        mean, _, _ = client.encode(images, seed=0)
        assert mean.shape == (6, LATENT)
        encoder = ort.InferenceSession(str(repo / "vae/1/encoder.onnx"), providers=["CPUExecutionProvider"])
        expected = encoder.run(["mean"], {"image": images})[0]
        np.testing.assert_allclose(mean, expected, atol=1e-4)
        floats, latents = client.sample(5, seed=3)
        small, again = client.sample(5, seed=3, uint8=True)
        assert floats.shape == small.shape == (5, 3, size, size) and small.dtype == np.uint8
        np.testing.assert_array_equal(latents, again)
        assert np.abs(small.astype(int) - np.rint(floats * 255)).max() <= 1
        assert client.encode((images * 255).round().astype(np.uint8), seed=0)[0].shape == (6, LATENT)
    # The Open Inference Protocol: the decoder model's image tensor is colour too.
    request = oip.ModelInferRequest(model_name="vae-decoder")
    request.inputs.add(name="latent", datatype="FP32", shape=[2, LATENT])
    request.raw_input_contents.append(latents[:2].tobytes())
    with grpc.insecure_channel(server.target) as channel:
        answer = oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    (output,) = answer.outputs
    assert list(output.shape) == [2, 3, size, size]
    decoded = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(2, 3, size, size)
    np.testing.assert_allclose(decoded, floats[:2], atol=1e-5)


def test_client_commands_write_colour_grids(colour, tmp_path) -> None:
    size, pictures, _, server = colour
    out = tmp_path / "samples.png"
    run_cli("sample", "--target", server.target, "--n", "4", "--seed", "0", "--scale", "1", "--out", str(out))
    with Image.open(out) as grid:
        assert grid.mode == "RGB" and grid.size == (2 * (size + 1) + 1,) * 2
    files = sorted(pictures.rglob("*.png"))[:2]
    run_cli("encode", "--target", server.target, *map(str, files), "--out", str(tmp_path / "means.npy"))
    assert np.load(tmp_path / "means.npy").shape == (2, LATENT)
    run_cli("reconstruct", "--target", server.target, *map(str, files), "--mean", "--out", str(tmp_path / "r.png"))
    with Image.open(tmp_path / "r.png") as grid:
        assert grid.mode == "RGB"


def png_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def picture(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def test_the_explorer_draws_colour_grids_and_takes_colour_uploads(colour) -> None:
    size, pictures, _, server = colour
    with VaeClient(server.target, timeout=60) as client:
        explorer = Explorer.connect(client, 1)
        model = json.loads(json.dumps(explorer.model()))
        assert model["expects"].startswith(f"{size}x{size} RGB images")
        grid = picture(explorer.sample({"seed": 1, "temperature": 1.0, "n": 4})["image"])
        assert grid.shape == (2 * (size + 1) + 1, 2 * (size + 1) + 1, 3)
        images, _ = client.sample(4, seed=1)
        np.testing.assert_array_equal(grid[1 : size + 1, 1 : size + 1], (images[0].transpose(1, 2, 0) * 255).round())
        upload = Image.open(sorted(pictures.rglob("*.png"))[0]).resize((3 * size, 2 * size))
        converted = explorer.convert({"upload": png_url(upload)})
        assert picture(converted["image"]).shape == (size + 2, size + 2, 3)
        assert f"-> {size}x{size}" in converted["note"]
