"""The exported graphs: their contract (names, shapes, metadata, one self-contained file, no sampling) and
parity with PyTorch under onnxruntime and under the onnx reference evaluator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx.reference import ReferenceEvaluator

from vaeserve import __version__
from vaeserve.export.graphs import OPSET, graph_modules
from vaeserve.export.parity import BATCH_SIZES, ParityError, check_parity, compare, random_inputs, run_both
from vaeserve.export.variants import neg_elbo, session
from vaeserve.repository import sha256_file
from vaeserve.training.checkpoint import load_model
from vaeserve.training.data import load_dataset
from vaeserve.training.model import reparameterize

KINDS = ("mlp", "conv", "gaussian")
RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}


@pytest.fixture(scope="module")
def real_images() -> np.ndarray:
    return load_dataset({"name": "digits"}).test.numpy()


def ort_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("kind", KINDS)
def test_version_folder_holds_the_contract(kind: str, exported: dict[str, Path], checkpoints: dict[str, Path]) -> None:
    folder = exported[kind]
    assert sorted(p.name for p in folder.iterdir()) == ["decoder.onnx", "encoder.onnx", "model.json"]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "temporary folder left behind"
    info = json.loads((folder / "model.json").read_text())
    vae, ckpt = load_model(checkpoints[kind])
    cfg = vae.cfg
    metadata = {"latent_dim": str(cfg.latent_dim), "image_shape": json.dumps(list(cfg.image_shape)),
                "likelihood": cfg.likelihood, "dataset": "digits", "vaeserve_version": __version__,
                "test_neg_elbo": repr(ckpt["metrics"]["test_neg_elbo"])}  # fmt: skip
    assert info["metadata"] == metadata
    assert (info["name"], info["version"], info["opset"]) == ("vae", 1, OPSET)
    assert (info["latent_dim"], info["image_shape"], info["likelihood"]) == (cfg.latent_dim, [1, 8, 8], cfg.likelihood)
    assert info["source_checkpoint"] == {"path": str(checkpoints[kind]), "sha256": sha256_file(checkpoints[kind])}
    assert info["model_config"] == cfg.to_dict()
    assert info["created"].endswith("Z")
    for graph in ("encoder", "decoder"):
        path = folder / f"{graph}.onnx"
        assert info["graphs"][graph]["sha256"] == sha256_file(path)
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(path)
        assert {p.key: p.value for p in model.metadata_props} == metadata
        assert [(o.domain, o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")] == [("", OPSET)]
        # Weights inside the file: no initializer points at external data.
        assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)
        # No sampling in either graph: the server draws the noise.
        assert not {n.op_type for n in model.graph.node} & RANDOM_OPS
    enc, dec = onnx.load(folder / "encoder.onnx").graph, onnx.load(folder / "decoder.onnx").graph
    c, h, w = cfg.image_shape

    def shapes(values):  # [(name, elem type, dims)] with the symbolic batch axis as its name
        return [(v.name, v.type.tensor_type.elem_type,
                 [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values]  # fmt: skip

    f32, z = onnx.TensorProto.FLOAT, cfg.latent_dim
    assert shapes(enc.input) == [("image", f32, ["batch", c, h, w])]
    assert shapes(enc.output) == [("mean", f32, ["batch", z]), ("log_variance", f32, ["batch", z])]
    assert shapes(dec.input) == [("latent", f32, ["batch", z])]
    # The decoder's logits beside the image (their sigmoid): what log p(x|z) is computed from when scoring.
    assert shapes(dec.output) == [("image", f32, ["batch", c, h, w]), ("logits", f32, ["batch", c, h, w])]


@pytest.mark.parametrize("kind", KINDS)
def test_onnxruntime_matches_pytorch_on_random_and_real_inputs(
    kind: str, exported: dict[str, Path], checkpoints: dict[str, Path], real_images: np.ndarray
) -> None:
    vae, _ = load_model(checkpoints[kind])
    modules = graph_modules(vae)
    sessions = {graph: ort_session(exported[kind] / f"{graph}.onnx") for graph in modules}
    with torch.no_grad():
        real_latents = vae.encoder(torch.from_numpy(real_images))[0].numpy()
    real = {"encoder": real_images, "decoder": real_latents}
    for graph, module in modules.items():
        for batch in BATCH_SIZES:
            for inputs in (random_inputs(vae, graph, batch, seed=batch), real[graph][:batch]):
                assert len(inputs) == batch
                diff, share = run_both(module, sessions[graph], inputs)
                assert share <= 1, f"{kind} {graph} batch {batch}: {diff}"


@pytest.mark.parametrize("kind", KINDS)
def test_reference_evaluator_agrees_with_pytorch(
    kind: str, exported: dict[str, Path], checkpoints: dict[str, Path]
) -> None:
    """onnx's own reference implementation of the operators, independent of onnxruntime's kernels."""
    vae, _ = load_model(checkpoints[kind])
    for graph, module in graph_modules(vae).items():
        reference = ReferenceEvaluator(str(exported[kind] / f"{graph}.onnx"))
        for batch in BATCH_SIZES:
            x = random_inputs(vae, graph, batch, seed=batch)
            with torch.no_grad():
                expected = module(torch.from_numpy(x))
            expected = expected if isinstance(expected, tuple) else (expected,)
            actual = reference.run(None, {reference.input_names[0]: x})
            diff, share = compare(actual, [e.numpy() for e in expected])
            assert share <= 1, f"{kind} {graph} batch {batch}: {diff}"


def test_tolerance_is_relative_for_large_values_and_refuses_nan() -> None:
    logit = np.float32(54.0)
    two_steps = np.nextafter(np.nextafter(logit, np.float32(99)), np.float32(99))  # 7.6e-6 away
    assert compare([np.array([two_steps]) + np.float32(4e-6)], [np.array([logit])])[1] <= 1  # 1.1e-5 at 54
    assert compare([np.array([0.5 + 2e-5], np.float32)], [np.array([0.5], np.float32)])[1] > 1  # pixels stay tight
    assert not compare([np.array([np.nan], np.float32)], [np.array([0.5], np.float32)])[1] <= 1


def test_export_refuses_graphs_that_differ_from_the_model(
    exported: dict[str, Path], checkpoints: dict[str, Path]
) -> None:
    vae, _ = load_model(checkpoints["mlp"])
    with torch.no_grad():
        next(vae.decoder.parameters()).add_(1e-3)  # the graphs on disk no longer compute this model
    paths = {graph: exported["mlp"] / f"{graph}.onnx" for graph in ("encoder", "decoder")}
    with pytest.raises(ParityError, match=r"decoder\.onnx: onnxruntime differs from PyTorch by .* at batch 1 "):
        check_parity(vae, paths)


@pytest.mark.parametrize("kind", ("mlp", "conv"))
def test_batch_of_1000_runs(kind: str, exported: dict[str, Path]) -> None:
    info = json.loads((exported[kind] / "model.json").read_text())
    mean, log_variance = ort_session(exported[kind] / "encoder.onnx").run(
        None, {"image": np.random.default_rng(0).random((1000, *info["image_shape"]), dtype=np.float32)}
    )
    image, logits = ort_session(exported[kind] / "decoder.onnx").run(None, {"latent": mean})
    assert mean.shape == log_variance.shape == (1000, info["latent_dim"])
    assert image.shape == (1000, *info["image_shape"])
    assert image.min() >= 0.0 and image.max() <= 1.0
    np.testing.assert_allclose(image, 1.0 / (1.0 + np.exp(-logits)), atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_numpy_elbo_from_graphs_matches_pytorch(
    kind: str, exported: dict[str, Path], checkpoints: dict[str, Path], real_images: np.ndarray
) -> None:
    """The variant measurement's -ELBO (numpy, from the graphs) is the training code's -ELBO for the same noise."""
    vae, _ = load_model(checkpoints[kind])
    log_sigma = vae.log_sigma.item() if vae.cfg.likelihood == "gaussian" else None
    folder = exported[kind]
    from_graphs = neg_elbo(session(folder / "encoder.onnx"), session(folder / "decoder.onnx"), real_images,
                           vae.cfg.likelihood, log_sigma, seed=3)  # fmt: skip
    eps = torch.from_numpy(np.random.default_rng(3).standard_normal((len(real_images), vae.cfg.latent_dim),
                                                                   dtype=np.float32))  # fmt: skip
    x = torch.from_numpy(real_images)
    with torch.no_grad():
        posterior = vae.encode(x)
        z = reparameterize(posterior.mean, posterior.log_variance, eps)
        expected = (vae.reconstruction_nll(x, vae.decode(z)) + posterior.kl_per_dim().sum(1)).mean().item()
    assert from_graphs == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_graphs_score_the_test_split_as_the_trainer_did(
    kind: str, exported: dict[str, Path], checkpoints: dict[str, Path], real_images: np.ndarray
) -> None:
    vae, ckpt = load_model(checkpoints[kind])
    log_sigma = vae.log_sigma.item() if vae.cfg.likelihood == "gaussian" else None
    folder = exported[kind]
    from_graphs = neg_elbo(session(folder / "encoder.onnx"), session(folder / "decoder.onnx"), real_images,
                           vae.cfg.likelihood, log_sigma)  # fmt: skip
    # One posterior sample per image here and in the trainer's evaluation, different noise: close, not equal.
    assert from_graphs == pytest.approx(ckpt["metrics"]["test_neg_elbo"], rel=0.02)
