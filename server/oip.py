"""The Open Inference Protocol (KServe v2, `inference.GRPCInferenceService`) beside vae.v1, on the same port.

A served version NAME is two models: NAME-encoder (input `image` FP32 or UINT8 [-1, C, H, W]; outputs `mean`,
`log_variance` and `latents` = mean + exp(0.5 * log_variance) * eps with eps drawn here, seeded by the request
parameter `seed`) and NAME-decoder (input `latent` FP32 [-1, D]; output `image`). Their versions are the
repository versions served now (models.py; `model_version` "" is the newest). A call is a thin translation: the
tensors go to the same batchers vae.v1 uses (so the two protocols' calls share batches), through the same
admission, tokens and metrics (methods counted as `oip.NAME`), and errors name the protocol's tensors. Inputs
come as raw bytes or in the typed contents fields; outputs go back as raw bytes (what tritonclient reads).

The model repository extension works on the repository's model NAME (whose versions are both models'):
RepositoryIndex lists its versions and their states, RepositoryModelLoad brings the served versions to what
--version-policy picks from the repository now, RepositoryModelUnload retires them all. Load and unload need
--model-control explicit; all three need an admin token (serve.py), or a server on loopback only. The other
optional extensions (configuration, statistics, streaming) are not served.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from vaeserve import __version__
from vaeserve.protos.inference import grpc_service_pb2 as pb
from vaeserve.repository import DECODER, ENCODER, GRAPHS, IMAGE, LATENT, LOG_VARIANCE, MEAN

from . import validation
from .batcher import NONE
from .errors import FailedPrecondition, InvalidArgument, NotFound, NoVersion, PermissionDenied
from .graphs import EPS, LATENTS
from .models import LoadFailed, Models, Served
from .noise import draw_eps

FP32, UINT8 = "FP32", "UINT8"
MAX_INDEX = 1024  # versions a RepositoryIndex lists at most, newest first
MAX_REASON_CHARS = 1024
UNLOAD_PARAMETERS = {"unload_dependents": "bool_param"}  # what tritonclient's unload_model sends; no dependents here


@dataclass(frozen=True)
class Model:
    name: str
    graph: str  # the batcher it runs on: ENCODER | DECODER
    input: str  # the protocol's input tensor name
    datatypes: tuple[str, ...]  # accepted for it; the first is what the metadata states
    row_shape: tuple[int, ...]
    outputs: dict[str, tuple[int, ...]]  # protocol name -> row shape, in order


class OipServicer:
    """The methods of inference.GRPCInferenceService, registered by `rpc.add_service`."""

    def __init__(
        self,
        name: str,
        models: Models,
        max_rows: int,
        ready: Callable[[], bool],
        explicit: bool,
        repository_refused: str = "",
    ) -> None:
        """explicit: --model-control explicit (loads and unloads on request); repository_refused: why the
        repository calls are refused here ("": they are not)."""
        self.name = name
        self.graphs = {f"{name}-{graph}": graph for graph in GRAPHS}  # the exported graphs, each a protocol model
        self.models = models
        self.max_rows = max_rows
        self.ready = ready
        self.explicit = explicit
        self.repository_refused = repository_refused
        self._described: weakref.WeakKeyDictionary[Served, dict[str, Model]] = weakref.WeakKeyDictionary()

    def _describe(self, served: Served) -> dict[str, Model]:
        """The two models of a served version, by graph (its shapes), built once per version."""
        described = self._described.get(served)
        if described is None:
            name, image, latent = self.name, tuple(served.model.image_shape), (served.model.latent_dim,)
            described = self._described[served] = {
                ENCODER: Model(f"{name}-{ENCODER}", ENCODER, IMAGE, (FP32, UINT8), image,
                               {MEAN: latent, LOG_VARIANCE: latent, LATENTS: latent}),
                DECODER: Model(f"{name}-{DECODER}", DECODER, LATENT, (FP32,), latent, {IMAGE: image}),
            }  # fmt: skip
        return described

    def work(self, method: str) -> Callable[[Any], dict[str, int]]:
        """The rows a call will run on each graph, as the request states them (admission's measure; see
        VaeServicer.work): ModelInfer's input rows on the model's graph, nothing for the other methods."""

        def infer(r: pb.ModelInferRequest) -> dict[str, int]:
            graph = self.graphs.get(r.model_name)
            if graph is None or len(r.inputs) != 1:
                return {}
            return {graph: validation.stated_rows(r.inputs[0].shape, self.max_rows)}

        return infer if method == "ModelInfer" else lambda r: {}

    def _graph(self, name: str) -> str:
        graph = self.graphs.get(name)
        if graph is None:
            raise NotFound(f"model_name: no model {_short(name)} (this server has {', '.join(self.graphs)})")
        return graph

    def _version(self, name: str, version: str) -> int:
        """The version number a request's model_version names: "" is the newest served (0)."""
        if version == "":
            return 0
        if not (version.isascii() and version.isdigit() and len(version) <= 18 and int(version) > 0):
            raise NotFound(f"model_version: {name} has version(s) {self.models.versions_text()}, not {_short(version)}")
        return int(version)

    def _model(self, name: str, version: str) -> tuple[Model, Served]:
        graph = self._graph(name)
        served = self.models.get(self._version(name, version))
        return self._describe(served)[graph], served

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
        try:
            self._model(request.name, request.version)
        except NoVersion:  # unloaded: not ready, and not an error to ask
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.ready())

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="vaeserve", version=__version__, extensions=["model_repository"])

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        model, _ = self._model(request.name, request.version)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=[str(v) for v in self.models.served],
            platform="vaeserve_onnx",
            inputs=[tensor(name=model.input, datatype=model.datatypes[0], shape=[-1, *model.row_shape])],
            outputs=[tensor(name=n, datatype=FP32, shape=[-1, *s]) for n, s in model.outputs.items()],
        )

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        graph = self._graph(request.model_name)
        with self.models.using(self._version(request.model_name, request.model_version)) as v:
            model = self._describe(v)[graph]
            n, data, uint8 = self._input(request, model)
            wanted = self._outputs(request, model)
            timeout = context.time_remaining()
            eps = draw_eps(_seed(request), n, v.model.latent_dim) if graph == ENCODER else b""
            try:
                # The batchers' tensor names are the protocol's (graphs.py): their outputs are the reply's.
                if graph == ENCODER:
                    results = await v.encoder.submit({IMAGE: data, EPS: eps}, n, timeout,
                                                     uint8_in=frozenset({IMAGE}) if uint8 else NONE)  # fmt: skip
                else:
                    results = await v.decoder.submit({LATENT: data}, n, timeout)
            except InvalidArgument as exc:  # the batch's value checks name vae.v1's fields: name the tensor instead
                raise exc.renamed(model.input) from exc
        response = pb.ModelInferResponse(model_name=model.name, model_version=str(v.version), id=request.id)
        for name in wanted:
            response.outputs.add(name=name, datatype=FP32, shape=[n, *model.outputs[name]])
            response.raw_output_contents.append(results[name])
        return response

    def _repository(self, repository_name: str, model_name: str | None = None) -> None:
        """Refuses a repository call this server does not take, or one naming another repository or model."""
        if self.repository_refused:
            raise PermissionDenied(self.repository_refused)
        if repository_name:
            raise NotFound(f"repository_name: this server has one repository (send ''), not {_short(repository_name)}")
        if model_name is not None and model_name != self.name:
            raise NotFound(f"model_name: the repository's model is {self.name!r} (served as {', '.join(self.graphs)}), "
                           f"not {_short(model_name)}")  # fmt: skip

    def _control(self, request: pb.RepositoryModelLoadRequest | pb.RepositoryModelUnloadRequest,
                 accepted: Mapping[str, str]) -> None:  # fmt: skip
        """A load or unload this server may do: explicit model control, and only parameters it understands."""
        self._repository(request.repository_name, request.model_name)
        if not self.explicit:
            raise FailedPrecondition("loads and unloads need --model-control explicit (this server's versions change "
                                     "only by its own --model-control)")  # fmt: skip
        for key, value in request.parameters.items():
            if accepted.get(key) != value.WhichOneof("parameter_choice"):
                known = ", ".join(f"{k} ({kind})" for k, kind in accepted.items()) or "none"
                raise InvalidArgument("parameters", f"{_short(key)} is not taken here (taken: {known}; the model's "
                                                    f"configuration is the server's flags)")  # fmt: skip

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        self._repository(request.repository_name)
        entry = pb.RepositoryIndexResponse.ModelIndex
        rows = [row for row in self.models.index() if row[1] == "READY" or not request.ready][:MAX_INDEX]
        return pb.RepositoryIndexResponse(models=[entry(name=self.name, version=str(version), state=state,
                                                        reason=reason[:MAX_REASON_CHARS])
                                                  for version, state, reason in rows])  # fmt: skip

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        """The served versions become what --version-policy picks from the repository now."""
        self._control(request, {})
        try:
            await self.models.load()
        except LoadFailed as exc:
            error = NotFound if exc.reason == "not_found" else FailedPrecondition
            raise error(f"{exc}; serving version(s) {self.models.versions_text()}") from exc
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        """Every served version retired: calls on them finish, new ones get UNAVAILABLE until a load."""
        self._control(request, UNLOAD_PARAMETERS)
        await self.models.unload()
        return pb.RepositoryModelUnloadResponse()

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
