"""The explorer's HTTP server: page.html and a small JSON API, every image computed by the gRPC server through
VaeClient and drawn by the client's own grid renderer as a PNG data URL.

    GET  /                 the page
    GET  /api/model        the model's description and the bundled digits
    POST /api/sample       {"seed": int | null, "temperature": float, "n": int}
    POST /api/interpolate  {"a": SOURCE, "b": SOURCE, "steps": int, "spherical": bool}
    POST /api/traverse     {"image": SOURCE, "span": float, "steps": int}
    POST /api/convert      {"upload": data URL, "invert": bool}: what the model sees of an upload
    POST /api/score        {"image": SOURCE}: -log p(x) in nats, against the bundled test digits' (Score RPC)
SOURCE is {"digit": index of a bundled digit} or {"upload": data URL of an image file, "invert": bool}. Answers are
JSON: {"image": PNG data URL, ...}, or {"error": one line} with 400 (the request), 413 (too big) or 502 (the
server). The standard library's threading HTTP server is enough for one person's page, and keeps the extra light.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import math
import signal
import sys
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

import grpc
import numpy as np

from vaeserve.errors import VaeserveError
from vaeserve.ports import port_error
from vaeserve.server.client import VaeClient, rpc_error_message, write_grid
from vaeserve.server.images import describe_input, fit, light_on_dark, load_image

MAX_BODY = 16 << 20  # bytes of one request: an uploaded photo, base64-encoded
MAX_SAMPLES = 256
MAX_STEPS = 32  # points on an interpolation path
MAX_TRAVERSE_STEPS = 15  # values per latent dimension
MAX_SPAN = 10.0  # prior standard deviations either side of the image's mean
MAX_TEMPERATURE = 10.0  # the server's own limit
SCORE_SAMPLES = 100  # importance samples per scored image
SEED_MAX = 2**64 - 1


class BadRequest(VaeserveError):
    """A request the page (or someone else) sent that cannot be served; the message names the field."""


class TooLarge(BadRequest):
    """A request body over MAX_BODY."""


def number(body: dict, name: str, kind: type, low: float, high: float, field: str = "") -> Any:
    """body[name] as `kind` in [low, high]: booleans, NaN, strings and other garbage are refused, naming
    `field` (default: name)."""
    value = body.get(name)
    try:
        valid = (not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
                 and low <= value <= high and (kind is float or value == int(value)))  # fmt: skip
    except OverflowError:  # an integer too big for a float
        valid = False
    if not valid:
        bounds = f"[{low}, {high}]" if kind is int else f"[{low:g}, {high:g}]"
        raise BadRequest(f"{field or name}: expected {'an integer' if kind is int else 'a number'} in {bounds}, "
                         f"got {value!r}")  # fmt: skip
    return kind(value)


def switch(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{name}: expected true or false, got {value!r}")
    return value


@dataclass
class Explorer:
    """What the page's calls need: the client, the model's description, the bundled digits in its input shape."""

    client: VaeClient
    info: Any  # vae_pb2.ModelInfo
    digits: np.ndarray  # [N, C, H, W]
    labels: list[int]
    digits_note: str  # how the bundled 8x8 grey digits were converted for this model ("" when they fit)
    scale: int  # PNG pixels per image pixel
    reference: np.ndarray | None = None  # -log p(x) of the bundled digits, scored on first use

    @classmethod
    def connect(cls, client: VaeClient, scale: int) -> Explorer:
        info = client.info()
        with resources.files(__package__).joinpath("digits.npz").open("rb") as f, np.load(f) as bundled:
            images, labels = bundled["images"], bundled["labels"].tolist()
        digits, note = fit(images, tuple(info.image_shape), "the bundled digits", hint_invert=False)
        return cls(client, info, digits, labels, note, scale)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.info.image_shape)

    def png(self, images: np.ndarray, columns: int | None = None, row_labels: tuple[str, ...] = ()) -> str:
        buffer = io.BytesIO()
        write_grid(images, buffer, columns=columns, scale=self.scale, row_labels=row_labels)
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()

    def model(self) -> dict:
        info = self.info
        return {
            "name": info.name,
            "version": info.version,
            "latent_dim": info.latent_dim,
            "image_shape": list(info.image_shape),
            "expects": describe_input(info.image_shape, info.metadata),
            "target": self.client.target,
            "digits_note": self.digits_note,
            "can_score": info.can_score,
            "digits": [
                {"label": label, "image": self.png(image[None], 1)}
                for image, label in zip(self.digits, self.labels, strict=True)
            ],
        }

    def sample(self, body: dict) -> dict:
        seed = None if body.get("seed") is None else number(body, "seed", int, 0, SEED_MAX)
        n = number(body, "n", int, 1, MAX_SAMPLES)
        temperature = number(body, "temperature", float, 0.01, MAX_TEMPERATURE)
        images, _ = self.client.sample(n, seed, temperature)
        return {"image": self.png(images)}

    def interpolate(self, body: dict) -> dict:
        steps = number(body, "steps", int, 2, MAX_STEPS)
        images, _ = self.client.interpolate(self.source(body, "a"), self.source(body, "b"), steps,
                                            spherical=switch(body, "spherical"))  # fmt: skip
        return {"image": self.png(images, columns=steps)}

    def traverse(self, body: dict) -> dict:
        """Each latent dimension in turn moved from mean - span to mean + span (the prior's standard deviations)
        around the image's posterior mean, the others held: one row per dimension."""
        steps = number(body, "steps", int, 2, MAX_TRAVERSE_STEPS)
        span = number(body, "span", float, 0.1, MAX_SPAN)
        mean = self.client.encode(self.source(body, "image")[None])[0][0]
        dims = len(mean)
        latents = np.repeat(mean[None, None], dims, axis=0).repeat(steps, axis=1)  # [dims, steps, dims]
        latents[np.arange(dims), :, np.arange(dims)] += np.linspace(-span, span, steps, dtype=np.float32)
        images = self.client.decode(latents.reshape(dims * steps, dims))
        return {"image": self.png(images, columns=steps, row_labels=tuple(f"z{d + 1}" for d in range(dims)))}

    def score(self, body: dict) -> dict:
        """-log p(x) of one image, beside the same figure for the bundled test digits: an image less likely than
        every one of them is called unusual (an anomaly, for a detector with a threshold fitted on more data:
        `vaeserve score --fit-threshold`)."""
        nll = float(-self.client.score(self.source(body, "image")[None], SCORE_SAMPLES, seed=0)["log_likelihood"][0])
        if self.reference is None:
            self.reference = -self.client.score(self.digits, SCORE_SAMPLES, seed=0)["log_likelihood"]
        highest = float(self.reference.max())
        return {"nll": nll, "median": float(np.median(self.reference)), "highest": highest,
                "verdict": "unusual" if nll > highest else "typical"}  # fmt: skip

    def convert(self, body: dict) -> dict:
        image, note = self.upload(body)
        return {"image": self.png(image[None], 1), "note": note}

    def source(self, body: dict, name: str) -> np.ndarray:
        """One image [C, H, W] from a SOURCE field: a bundled digit or an upload."""
        source = body.get(name)
        if not isinstance(source, dict) or ("digit" in source) == ("upload" in source):
            raise BadRequest(f'{name}: expected {{"digit": INDEX}} or {{"upload": DATA_URL}}, got {source!r}')
        if "upload" in source:
            return self.upload(source)[0]
        return self.digits[number(source, "digit", int, 0, len(self.digits) - 1, f"{name}.digit")]

    def upload(self, source: dict) -> tuple[np.ndarray, str]:
        """An uploaded image file (a data URL) converted to the model's input [C, H, W], and what was done."""
        url = source.get("upload")
        if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
            raise BadRequest("upload: expected a data URL (data:image/...;base64,...)")
        try:
            data = base64.b64decode(url.split(";base64,", 1)[1], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequest(f"upload: not base64 ({exc})") from exc
        invert = switch(source, "invert")
        decoded, size = load_image(data, "upload", self.image_shape)
        image, note = fit(decoded, self.image_shape, "upload", size=size, invert=invert,
                          hint_invert=light_on_dark(self.info.metadata))  # fmt: skip
        return image[0], note


ROUTES = {
    "/api/sample": Explorer.sample,
    "/api/interpolate": Explorer.interpolate,
    "/api/traverse": Explorer.traverse,
    "/api/convert": Explorer.convert,
    "/api/score": Explorer.score,
}


class Handler(BaseHTTPRequestHandler):
    """One request; `server.explorer` answers it."""

    server: ExplorerServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/":
            self.send(HTTPStatus.OK, resources.files(__package__).joinpath("page.html").read_bytes(), "text/html")
        elif self.path == "/api/model":
            self.answer(lambda: self.server.explorer.model())
        else:
            self.send_json(HTTPStatus.NOT_FOUND, {"error": f"{self.path}: no such page"})

    def do_POST(self) -> None:
        route = ROUTES.get(self.path)
        if route is None:
            self.send_json(HTTPStatus.NOT_FOUND, {"error": f"{self.path}: no such call"})
            return
        self.answer(lambda: route(self.server.explorer, self.body()))

    def body(self) -> dict:
        # JSON only: a page on another site cannot send it without a CORS preflight, which is never allowed.
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            raise BadRequest("expected Content-Type: application/json")
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            raise BadRequest(f"Content-Length: expected a number of bytes, got {length!r}")
        if int(length) > MAX_BODY:
            raise TooLarge(f"request of {length} bytes; at most {MAX_BODY} (an image of a few MB)")
        try:
            body = json.loads(self.rfile.read(int(length)))
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"not JSON ({exc})") from exc
        if not isinstance(body, dict):
            raise BadRequest(f"expected a JSON object, got {type(body).__name__}")
        return body

    def answer(self, call: Any) -> None:
        if not self.server.trusted_host(self.headers.get("Host", "")):
            self.send_json(HTTPStatus.FORBIDDEN, {"error": "unexpected Host header"})
            return
        try:
            self.send_json(HTTPStatus.OK, call())
            return
        except TooLarge as exc:
            status, error = HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(exc)
        except VaeserveError as exc:
            status, error = HTTPStatus.BAD_REQUEST, str(exc)
        except grpc.RpcError as exc:
            status, error = HTTPStatus.BAD_GATEWAY, rpc_error_message(self.server.explorer.client.target, exc)
        self.close_connection = True  # a body left unread must not be taken for the next request
        self.send_json(status, {"error": error})

    def send_json(self, status: HTTPStatus, payload: dict) -> None:
        self.send(status, json.dumps(payload).encode(), "application/json")

    def send(self, status: HTTPStatus, data: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(data)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Only failures are worth a line."""
        if int(code) >= 400:
            sys.stderr.write(f"explore: {self.command} {self.path}: {int(code)}\n")


class ExplorerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], explorer: Explorer) -> None:
        super().__init__(address, Handler)
        self.explorer = explorer

    @property
    def url(self) -> str:
        host = self.server_address[0]
        return f"http://{f'[{host}]' if ':' in host else host}:{self.server_port}/"

    def trusted_host(self, host: str) -> bool:
        """On loopback, only requests addressed to loopback names: a DNS-rebinding page on another site cannot
        reach the API under its own name."""
        if not self.server_address[0].startswith("127.") and self.server_address[0] != "::1":
            return True
        return host.rsplit(":", 1)[0].strip("[]") in ("127.0.0.1", "localhost", "::1", self.server_address[0])


def run(args: argparse.Namespace) -> int:
    from vaeserve.server.cli import connect

    client = connect(args)
    try:
        explorer = Explorer.connect(client, args.scale)
    except grpc.RpcError as exc:
        raise VaeserveError(rpc_error_message(args.target, exc)) from None
    try:
        server = ExplorerServer((args.host, args.port), explorer)
    except OSError as exc:
        raise port_error("--port", args.host, args.port, exc) from exc

    def stop(*_: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    info = explorer.info
    print(f"explorer on {server.url} for model {info.name} version {info.version} at {args.target} (Ctrl-C stops it)",
          flush=True)  # fmt: skip
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        client.close()
    return 0
