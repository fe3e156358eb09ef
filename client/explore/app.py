"""The explorer's HTTP server: page.html and a small JSON API, every image computed by the gRPC server through
VaeClient and drawn by the client's own grid renderer as a PNG data URL.

    GET  /                 the page
    GET  /api/model        the model's description and the bundled digits
    POST /api/sample       {"seed": int | null, "temperature": float, "n": int}
    POST /api/interpolate  {"a": SOURCE, "b": SOURCE, "steps": int, "spherical": bool}
    POST /api/traverse     {"image": SOURCE, "span": float, "steps": int}
    POST /api/convert      {"upload": data URL, "invert": bool}: what the model sees of an upload
    POST /api/score        {"image": SOURCE}: -log p(x) in nats, against the bundled test digits' (Score RPC)
SOURCE is {"digit": index of a bundled digit} or {"upload": data URL of a PNG, JPEG, WebP, GIF or BMP file,
"invert": bool}. Answers are JSON: {"image": PNG data URL, ...}, or {"error": one line} with 400 (the request), 408
(sent too slowly), 413 (too big), 503 (busy: Retry-After says when to try again) or 502 (the server).

The standard library's threading HTTP server is enough for one person's page, and keeps the extra light; what a
careless or hostile client could make of it is bounded: a thread per connection up to --max-connections; at most
--max-requests requests decode uploads and call the server at once (an upload is decoded no bigger than the model
needs); each request must arrive whole within --request-timeout-s; and the page runs only its own script and style
(Content-Security-Policy by their hashes) in no other site's frame.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hashlib
import io
import json
import math
import re
import reprlib
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

import grpc
import numpy as np

from vaeserve.api_bounds import MAX_TEMPERATURE
from vaeserve.errors import VaeserveError
from vaeserve.ports import port_error

from ..api import VaeClient, rpc_error_message
from ..images import describe_input, fit, light_on_dark, load_image
from ..pictures import write_grid
from .cli import MAX_CONNECTIONS, MAX_REQUESTS, REQUEST_TIMEOUT_S

MAX_BODY = 16 << 20  # bytes of one request: an uploaded photo, base64-encoded
MAX_SAMPLES = 256
MAX_STEPS = 32  # points on an interpolation path
MAX_TRAVERSE_STEPS = 15  # values per latent dimension
MAX_SPAN = 10.0  # prior standard deviations either side of the image's mean
SCORE_SAMPLES = 100  # importance samples per scored image
SEED_MAX = 2**64 - 1


class BadRequest(VaeserveError):
    """A request the page (or someone else) sent that cannot be served; the message names the field."""

    status = HTTPStatus.BAD_REQUEST


class TooLarge(BadRequest):
    """A request body over MAX_BODY."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class TooSlow(BadRequest):
    """A request body not received within --request-timeout-s."""

    status = HTTPStatus.REQUEST_TIMEOUT


class Busy(BadRequest):
    """No turn to compute in (--max-requests) came within --request-timeout-s: the client should try again."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


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
                         f"got {shown(value)}")  # fmt: skip
    return kind(value)


def switch(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{name}: expected true or false, got {shown(value)}")
    return value


def shown(value: object) -> str:
    """A refused value as the error line shows it: a megabyte string or a deep nest in a few dozen characters."""
    return reprlib.repr(value)


def traversal(mean: np.ndarray, span: float, steps: int) -> np.ndarray:
    """[D * steps, D] latents: dimension d (row d) moved from mean - span to mean + span in `steps` even steps,
    the others held at `mean` [D]."""
    dims = len(mean)
    latents = np.repeat(mean[None, None], dims, axis=0).repeat(steps, axis=1)  # [dims, steps, dims]
    latents[np.arange(dims), :, np.arange(dims)] += np.linspace(-span, span, steps, dtype=np.float32)
    return latents.reshape(dims * steps, dims)


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
    # One upload decoded at a time: decoding is what costs memory (a 4096x4096 RGBA file is 64 MB in Pillow, twice
    # while its alpha is premultiplied), and it is CPU-bound, so decoding several at once would only add that up.
    decoding: threading.Lock = field(default_factory=threading.Lock)

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
        images = self.client.decode(traversal(mean, span, steps))
        return {"image": self.png(images, columns=steps, row_labels=tuple(f"z{d + 1}" for d in range(len(mean))))}

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
            raise BadRequest(f'{name}: expected {{"digit": INDEX}} or {{"upload": DATA_URL}}, got {shown(source)}')
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
        with self.decoding:
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


PAGE = resources.files(__package__).joinpath("page.html").read_bytes()


def content_security_policy(page: bytes) -> str:
    """Only the page's own inline script and style run (named by their hashes, so an injected one would not), it
    fetches only from this server and shows only its own or data-URL images, and no other site may frame it."""

    def hashes(tag: bytes) -> str:
        found = re.findall(rb"<%b>(.*?)</%b>" % (tag, tag), page, re.DOTALL)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(text).digest()).decode()}'" for text in found)

    return (f"default-src 'none'; script-src {hashes(b'script')}; style-src {hashes(b'style')}; img-src 'self' "
            "data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")  # fmt: skip


CSP = content_security_policy(PAGE)


class DeadlineReader(io.RawIOBase):
    """A connection's bytes, every read bounded by one deadline (`restart`): a client that sends a byte now and
    then, or half a body, is cut off when the whole has taken too long, not only when a single read stalls.
    `received`: bytes since the restart (none: the connection was only idle)."""

    def __init__(self, connection: socket.socket) -> None:
        super().__init__()
        self.connection, self.deadline, self.received = connection, math.inf, 0

    def restart(self, seconds: float) -> None:
        self.deadline, self.received = time.monotonic() + seconds, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        self.connection.settimeout(left)
        count = self.connection.recv_into(buffer)
        self.received += count
        return count


class Handler(BaseHTTPRequestHandler):
    """One connection's requests; `server.explorer` answers them."""

    server: ExplorerServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain reader's hold on the socket, which would keep it open after close()
        self.reader = DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self.reader)

    def handle_one_request(self) -> None:
        # The request line and headers within --request-timeout-s, the wait for them on a kept-alive connection
        # included: an idle or trickling connection ends instead of holding its thread.
        self.reader.restart(self.server.request_timeout_s)
        super().handle_one_request()

    def do_GET(self) -> None:
        if self.path == "/":
            self.send(HTTPStatus.OK, PAGE, "text/html")
        elif self.path == "/api/model":
            self.answer(lambda: self.server.explorer.model())
        else:
            self.send_json(HTTPStatus.NOT_FOUND, {"error": f"{self.path}: no such page"})

    def do_POST(self) -> None:
        route = ROUTES.get(self.path)
        if route is None:
            self.send_json(HTTPStatus.NOT_FOUND, {"error": f"{self.path}: no such call"})
            return
        # The body is read in the turn: bodies waiting for one would be --max-connections x MAX_BODY of memory.
        self.answer(lambda: route(self.server.explorer, self.body()), turn=True)

    def body(self) -> dict:
        # JSON only: a page on another site cannot send it without a CORS preflight, which is never allowed.
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            raise BadRequest("expected Content-Type: application/json")
        length = self.headers.get("Content-Length", "")
        if not (length.isascii() and length.isdigit()):  # isdigit alone takes "²", which int() refuses
            raise BadRequest(f"Content-Length: expected a number of bytes, got {shown(length)}")
        if len(length) > len(str(MAX_BODY)) or int(length) > MAX_BODY:  # int() of thousands of digits raises
            raise TooLarge(f"request of {shown(length)[1:-1]} bytes; at most {MAX_BODY} (an image of a few MB)")
        timeout = self.server.request_timeout_s
        self.reader.restart(timeout)  # the body's own time: waiting for a turn was not the client's delay
        try:
            data = self.rfile.read(int(length))
        except TimeoutError:
            raise TooSlow(
                f"request body: {length} bytes not received within {timeout:g} s (--request-timeout-s)"
            ) from None
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested thousands deep
            raise BadRequest(f"not JSON ({exc})") from exc
        if not isinstance(body, dict):
            raise BadRequest(f"expected a JSON object, got {type(body).__name__}")
        return body

    def answer(self, call: Callable[[], dict], turn: bool = False) -> None:
        """call()'s answer as JSON, or its error; turn: call it in one of the server's --max-requests turns."""
        if not self.server.trusted_host(self.headers.get("Host", "")):
            self.send_json(HTTPStatus.FORBIDDEN, {"error": "unexpected Host header"})
            return
        try:
            with self.server.turn() if turn else contextlib.nullcontext():
                payload = call()
            self.send_json(HTTPStatus.OK, payload)
            return
        except BadRequest as exc:
            status, error = exc.status, str(exc)
        except VaeserveError as exc:
            status, error = HTTPStatus.BAD_REQUEST, str(exc)
        except grpc.RpcError as exc:
            status, error = HTTPStatus.BAD_GATEWAY, rpc_error_message(self.server.explorer.client.target, exc)
        self.close_connection = True  # a body left unread must not be taken for the next request
        self.send_json(status, {"error": error})

    def send_json(self, status: HTTPStatus, payload: dict) -> None:
        self.send(status, json.dumps(payload).encode(), "application/json")

    def send(self, status: HTTPStatus, data: bytes, kind: str) -> None:
        self.connection.settimeout(self.server.request_timeout_s)  # a client that never reads its answer ends too
        self.send_response(status)
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Frame-Options", "DENY")  # frame-ancestors for browsers that predate it
        if status == HTTPStatus.SERVICE_UNAVAILABLE:
            self.send_header("Retry-After", "1")
        self.end_headers()
        if self.command != "HEAD":  # an answer to HEAD has headers only (http.server refuses HEAD: 501)
            self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a malformed request line, too many headers, an unknown method) in JSON with
        the same headers as every other answer, instead of its HTML."""
        self.log_error("code %d, message %s", code, message)
        self.close_connection = True
        self.send_json(HTTPStatus(code), {"error": message or HTTPStatus(code).phrase})

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Only failures are worth a line."""
        if int(code) >= 400:
            sys.stderr.write(f"explore: {self.command or '-'} {shown(getattr(self, 'path', '-'))}: {int(code)}\n")

    def log_error(self, format: str, *args: Any) -> None:
        """A kept-alive connection closed after idling is routine; a request cut off part-way is worth a line."""
        if self.reader.received:
            sys.stderr.write(f"explore: {format % args}\n")


class ExplorerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        explorer: Explorer,
        max_requests: int = MAX_REQUESTS,
        max_connections: int = MAX_CONNECTIONS,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        super().__init__(address, Handler)
        self.explorer = explorer
        self.max_requests, self.max_connections = max_requests, max_connections
        self.request_timeout_s = request_timeout_s
        self.turns = threading.BoundedSemaphore(max_requests)
        self.connections = threading.BoundedSemaphore(max_connections)
        error = json.dumps({"error": f"busy: {max_connections} connections open (--max-connections); try again"})
        self.refusal = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
                        f"Content-Length: {len(error)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
                        f"{error}").encode()  # fmt: skip

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

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """One of --max-requests places to decode an upload and call the server in (what costs memory): a request
        waits up to --request-timeout-s for one, then is refused with 503."""
        if not self.turns.acquire(timeout=self.request_timeout_s):
            raise Busy(f"busy: {self.max_requests} requests being answered (--max-requests) and none finished within "
                       f"{self.request_timeout_s:g} s; try again")  # fmt: skip
        try:
            yield
        finally:
            self.turns.release()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """A thread per connection, up to --max-connections; past that a connection is answered 503 at once, from
        this (the accepting) thread without blocking, and closed: a flood of sockets cannot start unbounded threads."""
        if self.connections.acquire(blocking=False):
            return True
        sys.stderr.write(f"explore: {self.max_connections} connections open (--max-connections): refused one\n")
        request.setblocking(False)
        with contextlib.suppress(OSError):
            request.send(self.refusal)
        return False

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: its place is free again
            self.connections.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()


def run(args: argparse.Namespace) -> int:
    from vaeserve.client.cli import connect

    client = connect(args)
    try:
        explorer = Explorer.connect(client, args.scale)
    except grpc.RpcError as exc:
        raise VaeserveError(rpc_error_message(args.target, exc)) from None
    try:
        server = ExplorerServer((args.host, args.port), explorer, args.max_requests, args.max_connections,
                                args.request_timeout_s)  # fmt: skip
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
