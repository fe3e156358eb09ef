"""The graphs as the server runs them, each described once: what a request hands the batcher, what it gets back,
the per-batch value checks, and how a batch's outputs are computed from one onnxruntime run.

    encoder  image [C, H, W], eps [D]  ->  mean, log_variance, latents [D]
             latents = mean + exp(0.5 * log_variance) * eps: the reparameterization, over the whole batch at
             once, each row with its own request's eps
    decoder  latent [D]                ->  image [C, H, W]
    likelihood  image [C, H, W], mean, log_variance, eps [D]  ->  log_px, log_w [1]: one posterior sample
             z = mean + exp(0.5 * log_variance) * eps per row, log p(x|z) from the decoder's logits, and the
             importance weight log p(x|z) + log p(z) - log q(z|x) (Score, scoring.py)

The batcher joins the requests' rows into one array per input, runs `check` on them, calls `compute` with the
session's run function and checks `check_outputs`; the servicers only name the inputs and outputs. Tensors the
exported graphs have keep their ONNX names (vaeserve/repository.py, the contract); the names below are the
server's own. The Open Inference Protocol serves these names as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from vaeserve.elbo import log_importance_weight, log_likelihood, reparameterize
from vaeserve.repository import DECODER, ENCODER, IMAGE, LATENT, LOG_VARIANCE, MEAN

from . import validation

LIKELIHOOD = "likelihood"  # the decoder run for Score: a batcher (and a metrics label) of its own
GRAPHS = (ENCODER, DECODER, LIKELIHOOD)  # what the server runs, each a batcher
EPS = "eps"  # a row's standard normal noise, for the reparameterization
LATENTS = "latents"  # the encoder's posterior samples (vae.v1's EncodeResponse.latents, the OIP output's name)
LOG_PX, LOG_W = "log_px", "log_w"  # a sample's log p(x|z) and importance weight

RunFn = Callable[[np.ndarray], Sequence[np.ndarray]]  # a session's run: the graph's one input -> its outputs
Arrays = Mapping[str, np.ndarray]  # a batch's inputs by name, [rows, *row_shape] each


@dataclass(frozen=True)
class TensorSpec:
    name: str
    row_shape: tuple[int, ...]  # one row; a batch is [rows, *row_shape] float32 (requests may send images as uint8)
    optional: bool = False  # a request may leave it out: its rows are zeros then


@dataclass(frozen=True)
class GraphSpec:
    name: str  # one of GRAPHS: the metrics' graph label and the worker thread's name
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
    mean, log_variance = run(batch[IMAGE])
    return [mean, log_variance, reparameterize(mean, log_variance, batch[EPS])]


def _decode(run: RunFn, batch: Arrays) -> Sequence[np.ndarray]:
    return run(batch[LATENT])


def encoder(image_shape: tuple[int, ...], latent_dim: int) -> GraphSpec:
    latent = (latent_dim,)
    return GraphSpec(
        name=ENCODER,
        # Without eps (Score and Interpolate need only the posterior), latents = mean.
        inputs=(TensorSpec(IMAGE, tuple(image_shape)), TensorSpec(EPS, latent, optional=True)),
        outputs=(TensorSpec(MEAN, latent), TensorSpec(LOG_VARIANCE, latent), TensorSpec(LATENTS, latent)),
        compute=_encode,
        check=lambda batch: validation.check_images(batch[IMAGE]),
    )


def decoder(image_shape: tuple[int, ...], latent_dim: int) -> GraphSpec:
    return GraphSpec(
        name=DECODER,
        inputs=(TensorSpec(LATENT, (latent_dim,)),),
        outputs=(TensorSpec(IMAGE, tuple(image_shape)),),
        compute=_decode,
        check=lambda batch: validation.check_latents(batch[LATENT]),
        check_outputs=lambda outputs: validation.check_decoded(outputs[0]),
    )


def likelihood(image_shape: tuple[int, ...], latent_dim: int, kind: str, log_sigma: float | None) -> GraphSpec:
    """Per row, a posterior sample z of its image's q(z|x), log p(x|z) and the importance weight of z, from a
    decoder session asked for its logits. All numpy work is per batch, off the servicer's per-call path."""
    latent = (latent_dim,)

    def compute(run: RunFn, batch: Arrays) -> list[np.ndarray]:
        mean, log_variance = batch[MEAN], batch[LOG_VARIANCE]
        z = reparameterize(mean, log_variance, batch[EPS]).astype(np.float32)
        (logits,) = run(z)
        log_px = log_likelihood(batch[IMAGE], logits, kind, log_sigma)
        log_w = log_importance_weight(z, mean, log_variance, log_px)
        return [log_px.astype(np.float32)[:, None], log_w.astype(np.float32)[:, None]]

    return GraphSpec(
        name=LIKELIHOOD,
        inputs=(
            TensorSpec(IMAGE, tuple(image_shape)),
            TensorSpec(MEAN, latent),
            TensorSpec(LOG_VARIANCE, latent),
            TensorSpec(EPS, latent),
        ),
        outputs=(TensorSpec(LOG_PX, (1,)), TensorSpec(LOG_W, (1,))),
        compute=compute,
    )
