"""Locust load test of a vaeserve gRPC server.

    locust -f tests/load/locustfile.py --host 127.0.0.1:50051                      # web UI on :8089
    locust -f tests/load/locustfile.py --host 127.0.0.1:50051 --headless -u 32 -r 8 -t 30s --csv out/vae
    locust -f tests/load/locustfile.py --host 127.0.0.1:50051 --headless --tags encode   # one RPC only

Each simulated user holds one gRPC channel and sends a traffic mix weighted like real use: mostly Encode of
single images, then Sample(16) (float32 and uint8 images), batched Encode(32), Decode, Reconstruct, Score and
Interpolate. Every call is reported to
Locust as a request of type "grpc" named after the RPC (and its size), so Locust's statistics, CSV output,
`--exit-code-on-error` and distributed mode work unchanged. Tags (`sample`, `encode`, `decode`,
`reconstruct`, `score`, `interpolate`) select single RPCs for focused runs.

Against a secured server (deploy/k8s): VAESERVE_TLS_CA names the PEM CA that signed the server's certificate
(the channel then speaks TLS and checks it for the host in --host), and VAESERVE_TOKEN_FILE (first line) or
VAESERVE_TOKEN the bearer token sent with every call.
"""

from __future__ import annotations

# Before any channel exists: gRPC then waits cooperatively, so one slow call does not block the whole worker.
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import os  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from locust import User, between, tag, task  # noqa: E402
from locust.exception import StopUser  # noqa: E402

from vaeserve.client.api import to_tensor  # noqa: E402
from vaeserve.protos.vae.v1 import vae_pb2, vae_pb2_grpc  # noqa: E402

TIMEOUT_S = 30.0
SAMPLES = 16  # images per Sample call
BATCH = 32  # images per batched Encode call
SCORED, IMPORTANCE_SAMPLES = 4, 16  # images per Score call, and K
STEPS = 8  # points per Interpolate call
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


def target(host: str) -> str:
    """host:port from --host, with any scheme (grpc://, http://) and trailing slash removed."""
    return host.split("://", 1)[-1].rstrip("/")


def channel(host: str) -> grpc.Channel:
    """A channel to --host: TLS checked against VAESERVE_TLS_CA when it is set, else plaintext."""
    ca = os.environ.get("VAESERVE_TLS_CA")
    if not ca:
        return grpc.insecure_channel(target(host), options=CHANNEL_OPTIONS)
    credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca).read_bytes())
    return grpc.secure_channel(target(host), credentials, options=CHANNEL_OPTIONS)


def metadata() -> tuple[tuple[str, str], ...]:
    """The bearer token (first line of VAESERVE_TOKEN_FILE, else VAESERVE_TOKEN) as call metadata, or none."""
    token_file = os.environ.get("VAESERVE_TOKEN_FILE")
    token = Path(token_file).read_text().split("\n")[0].strip() if token_file else os.environ.get("VAESERVE_TOKEN")
    return (("authorization", f"Bearer {token}"),) if token else ()


class RpcFailure(Exception):
    """A failed call as Locust's failure table groups it: "STATUS: details"."""

    def __init__(self, exc: grpc.RpcError) -> None:
        super().__init__(f"{exc.code().name}: {exc.details()}")


class Payloads:
    """Valid requests for the served model, built once per process from GetModelInfo."""

    _cached: Payloads | None = None

    def __init__(self, info: vae_pb2.ModelInfo) -> None:
        rng = np.random.default_rng(0)
        image_shape = tuple(info.image_shape)
        self.sample = vae_pb2.SampleRequest(num_samples=SAMPLES)
        self.sample_uint8 = vae_pb2.SampleRequest(num_samples=SAMPLES, image_dtype=vae_pb2.UINT8)
        self.encode_one = vae_pb2.EncodeRequest(images=to_tensor(rng.random((1, *image_shape))))
        self.encode_batch = vae_pb2.EncodeRequest(images=to_tensor(rng.random((BATCH, *image_shape))))
        self.decode = vae_pb2.DecodeRequest(latents=to_tensor(rng.standard_normal((SAMPLES, info.latent_dim))))
        self.reconstruct = vae_pb2.ReconstructRequest(images=to_tensor(rng.random((SAMPLES, *image_shape))))
        self.score = vae_pb2.ScoreRequest(images=to_tensor(rng.random((SCORED, *image_shape))),
                                          num_importance_samples=IMPORTANCE_SAMPLES)  # fmt: skip
        self.interpolate = vae_pb2.InterpolateRequest(images=to_tensor(rng.random((2, *image_shape))), steps=STEPS)

    @classmethod
    def get(cls, stub: vae_pb2_grpc.VaeServiceStub, metadata: tuple[tuple[str, str], ...]) -> Payloads:
        if cls._cached is None:
            request = vae_pb2.GetModelInfoRequest()
            cls._cached = cls(stub.GetModelInfo(request, timeout=TIMEOUT_S, metadata=metadata))
        return cls._cached


class VaeUser(User):
    """A client of the VAE service; `host` is the server's HOST:PORT."""

    wait_time = between(0.005, 0.05)

    def on_start(self) -> None:
        if not self.host:
            raise StopUser("no target: pass --host HOST:PORT")
        self.channel = channel(self.host)
        self.stub = vae_pb2_grpc.VaeServiceStub(self.channel)
        self.metadata = metadata()
        try:
            self.payloads = Payloads.get(self.stub, self.metadata)
        except grpc.RpcError as exc:
            self._fire("GetModelInfo", 0.0, 0, RpcFailure(exc))
            raise StopUser() from None

    def on_stop(self) -> None:
        self.channel.close()

    def _fire(self, name: str, ms: float, length: int, exception: BaseException | None) -> None:
        self.environment.events.request.fire(
            request_type="grpc", name=name, response_time=ms, response_length=length, exception=exception,
            context={},
        )  # fmt: skip

    def call(self, name: str, method: Callable[..., Any], request: Any) -> None:
        """One RPC, timed and reported to Locust; a failed call is a Locust failure, never an exception here."""
        start = time.perf_counter()
        try:
            response = method(request, timeout=TIMEOUT_S, metadata=self.metadata)
        except grpc.RpcError as exc:
            self._fire(name, (time.perf_counter() - start) * 1e3, 0, RpcFailure(exc))
            return
        self._fire(name, (time.perf_counter() - start) * 1e3, response.ByteSize(), None)

    @tag("encode")
    @task(8)
    def encode_one(self) -> None:
        self.call("Encode(1)", self.stub.Encode, self.payloads.encode_one)

    @tag("sample")
    @task(4)
    def sample(self) -> None:
        self.call(f"Sample({SAMPLES})", self.stub.Sample, self.payloads.sample)

    @tag("sample")
    @task(2)
    def sample_uint8(self) -> None:
        self.call(f"Sample({SAMPLES}, uint8)", self.stub.Sample, self.payloads.sample_uint8)

    @tag("encode")
    @task(2)
    def encode_batch(self) -> None:
        self.call(f"Encode({BATCH})", self.stub.Encode, self.payloads.encode_batch)

    @tag("decode")
    @task(1)
    def decode(self) -> None:
        self.call(f"Decode({SAMPLES})", self.stub.Decode, self.payloads.decode)

    @tag("reconstruct")
    @task(1)
    def reconstruct(self) -> None:
        self.call(f"Reconstruct({SAMPLES})", self.stub.Reconstruct, self.payloads.reconstruct)

    @tag("score")
    @task(1)
    def score(self) -> None:
        self.call(f"Score({SCORED}x{IMPORTANCE_SAMPLES})", self.stub.Score, self.payloads.score)

    @tag("interpolate")
    @task(1)
    def interpolate(self) -> None:
        self.call(f"Interpolate({STEPS})", self.stub.Interpolate, self.payloads.interpolate)
