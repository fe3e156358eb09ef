"""The Open Inference Protocol (KServe v2, `inference.GRPCInferenceService`) beside vae.v1, on the same port.

A served version NAME is two models: NAME-encoder (input `image` FP32 or UINT8 [-1, C, H, W]; outputs `mean`,
`log_variance` and `latents` = mean + exp(0.5 * log_variance) * eps with eps drawn here, seeded by the request
parameter `seed`) and NAME-decoder (input `latent` FP32 [-1, D]; output `image`). Its version is the repository
version. A call is a thin translation: the tensors go to the same batchers vae.v1 uses (so the two protocols'
calls share batches), through the same admission, tokens and metrics (methods counted as `oip.NAME`), and
errors name the protocol's tensors. Inputs come as raw bytes or in the typed contents fields; outputs go back
as raw bytes (what tritonclient reads). The optional extensions (repository, configuration, statistics,
streaming) are not served.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from vaeserve import __version__
from vaeserve.protos.inference import grpc_service_pb2 as pb

from . import validation
from .batcher import NONE, Batcher
from .errors import InvalidArgument, RequestError
from .noise import draw_eps

IMAGES = frozenset({"images"})
FP32, UINT8 = "FP32", "UINT8"


class NotFound(RequestError):
    code = grpc.StatusCode.NOT_FOUND


@dataclass(frozen=True)
class Model:
    name: str
    graph: str  # the batcher it runs on: "encoder" | "decoder"
    input: str  # the protocol's input tensor name
    datatypes: tuple[str, ...]  # accepted for it; the first is what the metadata states
    row_shape: tuple[int, ...]
    outputs: dict[str, tuple[int, ...]]  # protocol name -> row shape, in order


class OipServicer:
    """The methods of inference.GRPCInferenceService, registered by `rpc.add_service`."""

    def __init__(
        self,
        name: str,
        version: int,
        image_shape: tuple[int, ...],
        latent_dim: int,
        encoder: Batcher,
        decoder: Batcher,
        max_rows: int,
        ready: Callable[[], bool],
    ) -> None:
        image, latent = tuple(image_shape), (latent_dim,)
        self.models = {
            f"{name}-encoder": Model(f"{name}-encoder", "encoder", "image", (FP32, UINT8), image,
                                     {"mean": latent, "log_variance": latent, "latents": latent}),
            f"{name}-decoder": Model(f"{name}-decoder", "decoder", "latent", (FP32,), latent, {"image": image}),
        }  # fmt: skip
        self.version = str(version)
        self.latent_dim = latent_dim
        self.encoder, self.decoder = encoder, decoder
        self.max_rows = max_rows
        self.ready = ready

    def work(self, method: str) -> Callable[[Any], dict[str, int]]:
        """The rows a call will run on each graph, as the request states them (admission's measure; see
        VaeServicer.work): ModelInfer's input rows on the model's graph, nothing for the other methods."""

        def infer(r: pb.ModelInferRequest) -> dict[str, int]:
            model = self.models.get(r.model_name)
            if model is None or len(r.inputs) != 1:
                return {}
            return {model.graph: validation.stated_rows(r.inputs[0].shape, self.max_rows)}

        return infer if method == "ModelInfer" else lambda r: {}

    def _model(self, name: str, version: str) -> Model:
        model = self.models.get(name)
        if model is None:
            raise NotFound(f"model_name: no model {_short(name)} (this server has {', '.join(self.models)})")
        if version not in ("", self.version):
            raise NotFound(f"model_version: {name} has version {self.version} only, not {_short(version)}")
        return model

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready())

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        self._model(request.name, request.version)
        return pb.ModelReadyResponse(ready=self.ready())

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="vaeserve", version=__version__, extensions=[])

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        model = self._model(request.name, request.version)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=[self.version],
            platform="vaeserve_onnx",
            inputs=[tensor(name=model.input, datatype=model.datatypes[0], shape=[-1, *model.row_shape])],
            outputs=[tensor(name=n, datatype=FP32, shape=[-1, *s]) for n, s in model.outputs.items()],
        )

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        model = self._model(request.model_name, request.model_version)
        n, data, uint8 = self._input(request, model)
        wanted = self._outputs(request, model)
        timeout = context.time_remaining()
        eps = draw_eps(_seed(request), n, self.latent_dim) if model.graph == "encoder" else b""
        try:
            if model.graph == "encoder":
                encoded = await self.encoder.submit({"images": data, "eps": eps}, n, timeout,
                                                    uint8_in=IMAGES if uint8 else NONE)  # fmt: skip
                results = {"mean": encoded["mean"], "log_variance": encoded["log_variance"],
                           "latents": encoded["latents"]}  # fmt: skip
            else:
                results = {"image": (await self.decoder.submit({"latents": data}, n, timeout))["images"]}
        except InvalidArgument as exc:  # the batch's value checks name vae.v1's fields: name the tensor instead
            raise exc.renamed(model.input) from exc
        response = pb.ModelInferResponse(model_name=model.name, model_version=self.version, id=request.id)
        for name in wanted:
            response.outputs.add(name=name, datatype=FP32, shape=[n, *model.outputs[name]])
            response.raw_output_contents.append(results[name])
        return response

    def _input(self, request: pb.ModelInferRequest, model: Model) -> tuple[int, bytes, bool]:
        """N, the bytes and whether they are uint8, of the one input, from raw bytes or typed contents."""
        if len(request.inputs) != 1:
            raise InvalidArgument("inputs", f"expected one tensor, {model.input!r}, got {len(request.inputs)}")
        tensor = request.inputs[0]
        if tensor.name != model.input:
            raise InvalidArgument("inputs[0].name", f"expected {model.input!r}, got {_short(tensor.name)}")
        if tensor.datatype not in model.datatypes:
            expected = " or ".join(model.datatypes)
            raise InvalidArgument(f"{model.input}.datatype", f"expected {expected}, got {_short(tensor.datatype)}")
        uint8 = tensor.datatype == UINT8
        if request.raw_input_contents:
            if len(request.raw_input_contents) != 1 or tensor.HasField("contents"):
                raise InvalidArgument("raw_input_contents", "expected the one input's bytes there, or typed contents")
            data = request.raw_input_contents[0]
        else:
            data = _contents(tensor.contents, uint8, model.input)
        n = validation.shaped_rows(tensor.shape, data, uint8, model.input, model.row_shape, self.max_rows)
        return n, data, uint8

    @staticmethod
    def _outputs(request: pb.ModelInferRequest, model: Model) -> list[str]:
        """The outputs asked for (all when none is named), each a known output named once: checked before anything
        is computed, so a reply holds each output at most once and is never bigger than the message limit allows
        (serve.message_limit counts every output of the largest call), however many names a request lists."""
        names = [o.name for o in request.outputs] or list(model.outputs)
        unknown = [name for name in names if name not in model.outputs]
        if unknown:
            raise InvalidArgument(
                "outputs", f"{model.name} has outputs {', '.join(model.outputs)}, not {_short(unknown[0])}"
            )
        if len(set(names)) != len(names):
            repeated = next(name for name in names if names.count(name) > 1)
            raise InvalidArgument("outputs", f"{_short(repeated)} is asked for more than once: name each output once")
        return names


def _short(text: str) -> str:
    """A caller's string as a message quotes it: at most 64 characters (a name is the caller's to inflate)."""
    return repr(text[:64] + "..." if len(text) > 64 else text)


def _contents(contents: pb.InferTensorContents, uint8: bool, name: str) -> bytes:
    """Typed contents as raw bytes: uint_contents for UINT8 (each must fit a byte), fp32_contents for FP32."""
    if uint8:
        values = np.asarray(contents.uint_contents, np.uint32)
        if values.size and values.max() > 255:
            raise InvalidArgument(f"{name}.contents", "UINT8 values must be in 0..255")
        return values.astype(np.uint8).tobytes()
    return np.asarray(contents.fp32_contents, "<f4").tobytes()


def _seed(request: pb.ModelInferRequest) -> int | None:
    """The request parameter `seed` (int64 >= 0 or uint64), or None."""
    if "seed" not in request.parameters:
        return None
    parameter = request.parameters["seed"]
    kind = parameter.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param") or getattr(parameter, kind) < 0:
        raise InvalidArgument("parameters.seed", "expected a non-negative int64_param or a uint64_param")
    return getattr(parameter, kind)
