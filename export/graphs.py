"""The two graphs the repository holds, as PyTorch modules, and their export to ONNX.

The encoder graph is `VAE.encoder` (image -> mean, log_variance); the decoder graph is `VAE.decode_mean`
(latent -> image in [0, 1]) with the logits it is the sigmoid of as a second output, from which log p(x|z) is
computed without clipping a probability (the server's Score). The reparameterization
z = mean + exp(0.5 * log_variance) * eps is in neither: the server draws eps itself.
"""

from __future__ import annotations

import logging
import warnings

import onnx
import torch
from torch import nn

from vaeserve.repository import DECODER, ENCODER
from vaeserve.training.model import VAE

# Opset 18 is the exporter's own (torchlib's) opset: emitted without the version converter that its default,
# 20, goes through, and run by onnxruntime since 1.14. Pinned, so an upgrade of torch does not change it.
OPSET = 18
EXAMPLE_BATCH = 4  # >= 2, or torch.export specialises the batch axis to the example's size


class DecoderMean(nn.Module):
    """The decoder graph: latent -> (E[x|z], the sigmoid of the logits for both likelihoods; the logits)."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.vae.decode(latent)
        return torch.sigmoid(logits), logits


def graph_modules(vae: VAE) -> dict[str, nn.Module]:
    """The PyTorch modules each graph computes, the reference the parity checks compare against."""
    return {ENCODER: vae.encoder, DECODER: DecoderMean(vae)}


def export_graph(module: nn.Module, example: torch.Tensor, signature: dict[str, dict[str, list]]) -> onnx.ModelProto:
    """One module -> an ONNX model with the weights inside (no external data) and a dynamic batch axis."""
    (input_name,) = signature["inputs"]
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        # The exporter warns about optional torchvision ops and deprecated pytree APIs: not ours to fix.
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(
            module.eval(),
            (example,),
            input_names=[input_name],
            output_names=list(signature["outputs"]),
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    return program.model_proto
