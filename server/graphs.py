"""The two graphs as the server runs them, each described once: what a request hands the batcher, what it gets
back, the per-batch value checks, and how a batch's outputs are computed from one onnxruntime run.

    encoder  images [C, H, W], eps [D]  ->  mean, log_variance, latents [D]
             latents = mean + exp(0.5 * log_variance) * eps: the reparameterization, over the whole batch at
             once, each row with its own request's eps
    decoder  latents [D]                ->  images [C, H, W]
    likelihood  images [C, H, W], mean, log_variance, eps [D]  ->  log_px, log_w [1]: one posterior sample
             z = mean + exp(0.5 * log_variance) * eps per row, log p(x|z) from the decoder's logits, and the
             importance weight log p(x|z) + log p(z) - log q(z|x) (Score, scoring.py)

The batcher joins the requests' rows into one array per input, runs `check` on them, calls `compute` with the
session's run function and checks `check_outputs`; the servicer only names the inputs and outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from vaeserve.elbo import log_importance_weight, log_likelihood, reparameterize

from . import validation

RunFn = Callable[[np.ndarray], Sequence[np.ndarray]]  # a session's run: the graph's one input -> its outputs
Arrays = Mapping[str, np.ndarray]  # a batch's inputs by name, [rows, *row_shape] each


@dataclass(frozen=True)
class TensorSpec:
    name: str
    row_shape: tuple[int, ...]  # one row; a batch is [rows, *row_shape] float32 (requests may send images as uint8)
    optional: bool = False  # a request may leave it out: its rows are zeros then


@dataclass(frozen=True)
class GraphSpec:
    name: str  # "encoder" | "decoder": the metrics' graph label and the worker thread's name
    inputs: tuple[TensorSpec, ...]  # what each request gives, rows aligned
    outputs: tuple[TensorSpec, ...]  # what each request gets back, in this order
    compute: Callable[[RunFn, Arrays], Sequence[np.ndarray]]  # one batch: the outputs, in order
    # Raise a RequestError (naming the request's field) for values the graph must not see, or must not return.
    # Run once per batch; request by request only when the batch fails, so only the bad requests fail.
    check: Callable[[Arrays], None] | None = None
    check_outputs: Callable[[Sequence[np.ndarray]], None] | None = None

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)


def _encode(run: RunFn, batch: Arrays) -> list[np.ndarray]:
    mean, log_variance = run(batch["images"])
    return [mean, log_variance, reparameterize(mean, log_variance, batch["eps"])]


def _decode(run: RunFn, batch: Arrays) -> Sequence[np.ndarray]:
    return run(batch["latents"])


def encoder(image_shape: tuple[int, ...], latent_dim: int) -> GraphSpec:
    latent = (latent_dim,)
    return GraphSpec(
        name="encoder",
        # Without eps (Score and Interpolate need only the posterior), latents = mean.
        inputs=(TensorSpec("images", tuple(image_shape)), TensorSpec("eps", latent, optional=True)),
        outputs=(TensorSpec("mean", latent), TensorSpec("log_variance", latent), TensorSpec("latents", latent)),
        compute=_encode,
        check=lambda batch: validation.check_images(batch["images"]),
    )


def decoder(image_shape: tuple[int, ...], latent_dim: int) -> GraphSpec:
    return GraphSpec(
        name="decoder",
        inputs=(TensorSpec("latents", (latent_dim,)),),
        outputs=(TensorSpec("images", tuple(image_shape)),),
        compute=_decode,
        check=lambda batch: validation.check_latents(batch["latents"]),
        check_outputs=lambda outputs: validation.check_decoded(outputs[0]),
    )


def likelihood(image_shape: tuple[int, ...], latent_dim: int, kind: str, log_sigma: float | None) -> GraphSpec:
    """Per row, a posterior sample z of its image's q(z|x), log p(x|z) and the importance weight of z, from a
    decoder session asked for its logits. All numpy work is per batch, off the servicer's per-call path."""
    latent = (latent_dim,)

    def compute(run: RunFn, batch: Arrays) -> list[np.ndarray]:
        mean, log_variance = batch["mean"], batch["log_variance"]
        z = reparameterize(mean, log_variance, batch["eps"]).astype(np.float32)
        (logits,) = run(z)
        log_px = log_likelihood(batch["images"], logits, kind, log_sigma)
        log_w = log_importance_weight(z, mean, log_variance, log_px)
        return [log_px.astype(np.float32)[:, None], log_w.astype(np.float32)[:, None]]

    return GraphSpec(
        name="likelihood",
        inputs=(
            TensorSpec("images", tuple(image_shape)),
            TensorSpec("mean", latent),
            TensorSpec("log_variance", latent),
            TensorSpec("eps", latent),
        ),
        outputs=(TensorSpec("log_px", (1,)), TensorSpec("log_w", (1,))),
        compute=compute,
    )
