"""The explorer's JSON API over real HTTP, in front of a real server: what each panel gets, and every field's
bounds against hostile values (each refusal one line naming the field)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tests.harness import ServerProcess, explorer_ready, free_port, wait_until
from vaeserve.client.api import VaeClient
from vaeserve.client.explore.app import MAX_BODY, Explorer, ExplorerServer


def request(explorer: ExplorerServer, path: str, body: object = None, headers: dict | None = None,
            raw: bytes | None = None) -> tuple[int, dict]:  # fmt: skip
    """(status, JSON answer) of GET `path`, or POST of `body` as JSON (or `raw` bytes as they are)."""
    connection = http.client.HTTPConnection("127.0.0.1", explorer.server_port, timeout=60)
    try:
        if body is None and raw is None:
            connection.request("GET", path, headers=headers or {})
        else:
            data = raw if raw is not None else json.dumps(body).encode()
            connection.request("POST", path, data, {"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def picture(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def png_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_the_page_and_the_model(explorer: ExplorerServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", explorer.server_port, timeout=10)
    connection.request("GET", "/")
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("Content-Type") == "text/html; charset=utf-8"
    assert b"<title>vaeserve explorer</title>" in response.read()
    status, model = request(explorer, "/api/model")
    assert status == 200 and (model["name"], model["version"], model["latent_dim"]) == ("vae", 1, 8)
    assert model["expects"].startswith("8x8 grey images") and model["digits_note"] == ""
    assert [d["label"] for d in model["digits"]] == [label for label in range(10) for _ in range(2)]
    assert picture(model["digits"][0]["image"]).shape == (10, 10)  # one 8x8 digit in its 1-pixel frame


def test_samples_follow_the_seed(explorer: ExplorerServer, default_server: ServerProcess) -> None:
    seven = request(explorer, "/api/sample", {"seed": 7, "temperature": 1.0, "n": 4})
    again = request(explorer, "/api/sample", {"seed": 7, "temperature": 1.0, "n": 4})
    other = request(explorer, "/api/sample", {"seed": 8, "temperature": 1.0, "n": 4})
    assert seven[0] == 200 and seven == again and other[1]["image"] != seven[1]["image"]
    with VaeClient(default_server.target) as client:
        images, _ = client.sample(4, seed=7)
    grid = picture(seven[1]["image"])
    assert grid.shape == (2 * 9 + 1, 2 * 9 + 1)
    np.testing.assert_array_equal(grid[1:9, 10:18], (images[1, 0] * 255).round().astype(np.uint8))
    assert request(explorer, "/api/sample", {"seed": None, "temperature": 0.5, "n": 1})[0] == 200


def test_interpolation_and_traversal_pictures(explorer: ExplorerServer, default_server: ServerProcess) -> None:
    status, answer = request(explorer, "/api/interpolate",
                             {"a": {"digit": 0}, "b": {"digit": 14}, "steps": 6, "spherical": True})  # fmt: skip
    assert status == 200 and picture(answer["image"]).shape == (10, 6 * 9 + 1)
    digits = explorer.explorer.digits
    with VaeClient(default_server.target) as client:
        expected, _ = client.interpolate(digits[0], digits[14], 6, spherical=True)
    np.testing.assert_array_equal(picture(answer["image"])[1:9, 1:9], (expected[0, 0] * 255).round())

    status, answer = request(explorer, "/api/traverse", {"image": {"digit": 6}, "span": 2.0, "steps": 5})
    traversal = picture(answer["image"])
    assert status == 200 and traversal.shape[0] == 8 * 9 + 1  # a row per latent dimension, labelled z1..z8
    assert traversal.shape[1] > 5 * 9 + 1


def test_score_places_an_image_among_the_bundled_digits(
    explorer: ExplorerServer, default_server: ServerProcess
) -> None:
    status, digit = request(explorer, "/api/score", {"image": {"digit": 5}})
    assert status == 200 and digit["verdict"] == "typical" and digit["nll"] <= digit["highest"]
    with VaeClient(default_server.target) as client:
        expected = -client.score(explorer.explorer.digits[5:6], 100, seed=0)["log_likelihood"][0]
    assert digit["nll"] == pytest.approx(float(expected))
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (8, 8), dtype=np.uint8))
    status, odd = request(explorer, "/api/score", {"image": {"upload": png_url(noise)}})
    assert status == 200 and odd["verdict"] == "unusual" and odd["nll"] > odd["highest"]
    status, answer = request(explorer, "/api/score", {"image": {"digit": 99}})
    assert status == 400 and answer["error"].startswith("image.digit: expected an integer in [0, 19]")


def test_an_upload_is_converted_and_said(explorer: ExplorerServer) -> None:
    sheet = Image.new("RGBA", (28, 28), (0, 0, 0, 0))
    sheet.paste((0, 0, 0, 255), (13, 4, 16, 24))
    status, answer = request(explorer, "/api/convert", {"upload": png_url(sheet), "invert": True})
    assert status == 200 and picture(answer["image"]).shape == (10, 10)
    assert answer["note"] == ("converted: transparent pixels made white (the strokes are dark), inverted, RGB -> "
                              "grey, resized 28x28 -> 8x8 (aspect ratio kept, padded with black)")  # fmt: skip
    ends = {"a": {"upload": png_url(sheet), "invert": True}, "b": {"digit": 2}, "steps": 2}
    assert request(explorer, "/api/interpolate", ends)[0] == 200
    assert "hint: mostly light" in request(explorer, "/api/convert", {"upload": png_url(sheet)})[1]["note"]
    # A 4096x4096 drawing, decoded no bigger than the 8x8 model needs (tests/server/test_images.py): the note
    # names the file's own size.
    sheet = Image.new("RGBA", (4096, 4096), (0, 0, 0, 0))
    sheet.paste((0, 0, 0, 255), (1900, 500, 2200, 3600))
    status, answer = request(explorer, "/api/convert", {"upload": png_url(sheet), "invert": True})
    assert status == 200 and "inverted, RGB -> grey, resized 4096x4096 -> 8x8 (aspect" in answer["note"]


GOOD = {"seed": 1, "temperature": 1.0, "n": 4}
HOSTILE_SAMPLES = [
    ({**GOOD, "seed": -1}, "seed: expected an integer in [0, 18446744073709551615], got -1"),
    ({**GOOD, "seed": 2**64}, "seed: expected an integer in [0, 18446744073709551615], got 18446744073709551616"),
    ({**GOOD, "seed": 10**400}, "seed: expected an integer"),
    ({**GOOD, "seed": 1.5}, "seed: expected an integer in"),
    ({**GOOD, "seed": "7"}, "seed: expected an integer in [0, 18446744073709551615], got '7'"),
    ({**GOOD, "seed": True}, "seed: expected an integer in [0, 18446744073709551615], got True"),
    ({**GOOD, "n": 0}, "n: expected an integer in [1, 256], got 0"),
    ({**GOOD, "n": 257}, "n: expected an integer in [1, 256], got 257"),
    ({**GOOD, "n": None}, "n: expected an integer in [1, 256], got None"),
    ({**GOOD, "temperature": 0}, "temperature: expected a number in [0.01, 10], got 0"),
    ({**GOOD, "temperature": 11}, "temperature: expected a number in [0.01, 10], got 11"),
    ({**GOOD, "temperature": 1e308 * 10}, "temperature: expected a number in [0.01, 10], got inf"),
    ({**GOOD, "temperature": float("nan")}, "temperature: expected a number in [0.01, 10], got nan"),
    ({**GOOD, "temperature": "hot"}, "temperature: expected a number in [0.01, 10], got 'hot'"),
]
ENDS = {"a": {"digit": 0}, "b": {"digit": 1}, "steps": 4}
MEGABYTE = "'xxxxxxxxxxxx...xxxxxxxxxxxxx'"  # how an error line shows a string of a million x
HOSTILE_PATHS = [
    ("/api/interpolate", {**ENDS, "steps": 1}, "steps: expected an integer in [2, 32], got 1"),
    ("/api/interpolate", {**ENDS, "steps": 33}, "steps: expected an integer in [2, 32], got 33"),
    ("/api/interpolate", {**ENDS, "spherical": "yes"}, "spherical: expected true or false, got 'yes'"),
    ("/api/interpolate", {**ENDS, "a": {"digit": -1}}, "a.digit: expected an integer in [0, 19], got -1"),
    ("/api/interpolate", {**ENDS, "b": {"digit": 20}}, "b.digit: expected an integer in [0, 19], got 20"),
    ("/api/interpolate", {**ENDS, "b": {"digit": "0"}}, "b.digit: expected an integer in [0, 19], got '0'"),
    ("/api/interpolate", {**ENDS, "a": 3}, 'a: expected {"digit": INDEX} or {"upload": DATA_URL}, got 3'),
    ("/api/interpolate", {**ENDS, "a": {}}, 'a: expected {"digit": INDEX} or {"upload": DATA_URL}, got {}'),
    ("/api/interpolate", {**ENDS, "a": {"digit": 0, "upload": ""}}, "a: expected"),
    ("/api/interpolate", {"steps": 4}, "a: expected"),
    ("/api/interpolate", {**ENDS, "a": {"upload": "http://x/y.png"}}, "upload: expected a data URL"),
    ("/api/interpolate", {**ENDS, "a": {"upload": "data:image/png;base64,@@@"}}, "upload: not base64"),
    ("/api/interpolate", {**ENDS, "a": {"upload": "data:image/png;base64,AAAA"}}, "upload: cannot read as an image"),
    ("/api/interpolate", {**ENDS, "a": {"upload": "data:image/png;base64,", "invert": 1}},
     "invert: expected true or false, got 1"),
    ("/api/traverse", {"image": {"digit": 0}, "span": 0, "steps": 5}, "span: expected a number in [0.1, 10], got 0"),
    ("/api/traverse", {"image": {"digit": 0}, "span": -3, "steps": 5}, "span: expected a number in [0.1, 10]"),
    ("/api/traverse", {"image": {"digit": 0}, "span": 3, "steps": 16}, "steps: expected an integer in [2, 15], got 16"),
    ("/api/traverse", {"span": 3, "steps": 5}, "image: expected"),
    ("/api/convert", {"upload": 5}, "upload: expected a data URL"),
    # Formats outside PNG, JPEG, WebP, GIF and BMP never reach a decoder (EPS would run Ghostscript).
    ("/api/convert", {"upload": "data:image/eps;base64," + base64.b64encode(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: "
     b"0 0 8 8\nshowpage\n").decode()}, "upload: cannot read as an image (not a PNG, JPEG, WEBP, GIF or BMP file)"),
    ("/api/convert", {"upload": "data:image/tiff;base64,SUkqAAgAAAA="},
     "upload: cannot read as an image (not a PNG, JPEG, WEBP, GIF or BMP file)"),
    # A refused value is shown in a few dozen characters, however big it is.
    ("/api/sample", {**GOOD, "n": "x" * 1_000_000},
     f"n: expected an integer in [1, 256], got {MEGABYTE}"),
    ("/api/traverse", {"image": {"upload": "x" * 1_000_000, "digit": 1}, "span": 3, "steps": 5},
     f"""image: expected {{"digit": INDEX}} or {{"upload": DATA_URL}}, got {{'digit': 1, 'upload': {MEGABYTE}}}"""),
]  # fmt: skip


@pytest.mark.parametrize(("body", "error"), HOSTILE_SAMPLES)
def test_sample_fields_are_bounded(explorer: ExplorerServer, body: dict, error: str) -> None:
    status, answer = request(explorer, "/api/sample", body)
    assert status == 400 and answer["error"].startswith(error), answer


@pytest.mark.parametrize(("path", "body", "error"), HOSTILE_PATHS)
def test_interpolation_traversal_and_upload_fields_are_bounded(
    explorer: ExplorerServer, path: str, body: dict, error: str
) -> None:
    status, answer = request(explorer, path, body)
    assert status == 400 and answer["error"].startswith(error) and len(answer["error"]) < 200, answer


def test_bad_requests_are_refused_whole(explorer: ExplorerServer) -> None:
    cases = [
        (request(explorer, "/api/sample", raw=b"{not json"), 400, "not JSON"),
        (request(explorer, "/api/sample", raw=b"[1, 2]"), 400, "expected a JSON object, got list"),
        (request(explorer, "/api/sample", raw=b""), 400, "not JSON"),
        (request(explorer, "/api/sample", GOOD, headers={"Content-Type": "text/plain"}), 400,
         "expected Content-Type: application/json"),
        (request(explorer, "/api/sample", raw=b"{}", headers={"Content-Length": str(MAX_BODY + 1)}), 413,
         f"request of {MAX_BODY + 1} bytes; at most {MAX_BODY}"),
        (request(explorer, "/api/sample", raw=b"{}", headers={"Content-Length": "-5"}), 400,
         "Content-Length: expected a number of bytes, got '-5'"),
        # A digit Python's isdigit takes but int() refuses, and more digits than int() parses: each one JSON line.
        (request(explorer, "/api/sample", raw=b"{}", headers={"Content-Length": "\u00b2"}), 400,
         "Content-Length: expected a number of bytes, got '\u00b2'"),
        (request(explorer, "/api/sample", raw=b"{}", headers={"Content-Length": "9" * 5000}), 413,
         f"request of 999999999999...9999999999999 bytes; at most {MAX_BODY}"),
        # 100,000 nested arrays: deeper than the JSON parser recurses.
        (request(explorer, "/api/sample", raw=b"[" * 100_000 + b"]" * 100_000), 400,
         "not JSON (maximum recursion depth exceeded"),
        (request(explorer, "/api/nothing", GOOD), 404, "/api/nothing: no such call"),
        (request(explorer, "/etc/passwd"), 404, "/etc/passwd: no such page"),
        (request(explorer, "/api/model", headers={"Host": "attacker.example:8080"}), 403, "unexpected Host header"),
        (request(explorer, "/api/sample", GOOD, headers={"Host": "attacker.example"}), 403, "unexpected Host header"),
    ]  # fmt: skip
    for (status, answer), expected_status, error in cases:
        assert (status, answer["error"][: len(error)]) == (expected_status, error)
    assert request(explorer, "/api/model", headers={"Host": f"localhost:{explorer.server_port}"})[0] == 200


def test_a_server_gone_is_a_502_that_says_what_to_do(explorer: ExplorerServer) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    with VaeClient(nobody, timeout=5) as gone:
        http = ExplorerServer(("127.0.0.1", 0), Explorer(gone, *_the_rest(explorer.explorer)))
        with http:
            thread = threading.Thread(target=http.serve_forever, daemon=True)
            thread.start()
            status, answer = request(http, "/api/sample", GOOD)
            http.shutdown()
            thread.join()
    assert status == 502 and answer["error"].startswith(f"{nobody}: UNAVAILABLE: ")
    assert answer["error"].endswith(f"(is a server running at {nobody}? `make serve` starts one)")


def _the_rest(explorer: Explorer) -> tuple:
    return explorer.info, explorer.digits, explorer.labels, explorer.digits_note, explorer.scale


def test_the_bundled_digits_are_test_digits_of_the_default_model() -> None:
    """digits.npz: the first two test-split digits of each class (training/data.py's fixed split), exactly."""
    from vaeserve.training.data import load_digits

    splits = load_digits()
    test, labels = splits.test.numpy(), splits.test_labels.numpy()
    with np.load(Path(sys.modules["vaeserve.client.explore.app"].__file__).parent / "digits.npz") as bundled:
        index = [i for label in range(10) for i in np.flatnonzero(labels == label)[:2]]
        np.testing.assert_array_equal(bundled["test_index"], index)
        np.testing.assert_array_equal(bundled["images"], test[index])
        np.testing.assert_array_equal(bundled["labels"], labels[index])


def test_explore_command_errors_are_one_line(default_server: ServerProcess, tmp_path: Path) -> None:
    def explore(*flags: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "vaeserve.cli", "explore", *flags]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    nobody = f"127.0.0.1:{free_port()}"
    result = explore("--target", nobody, "--port", "0")
    assert result.returncode == 2 and result.stderr.startswith(f"vaeserve explore: error: {nobody}: UNAVAILABLE: ")
    assert result.stderr.endswith(f"(is a server running at {nobody}? `make serve` starts one)\n")

    held = default_server.port  # the gRPC server holds that port
    result = explore("--target", default_server.target, "--port", str(held))
    assert (result.returncode, result.stderr) == (
        2,
        f"vaeserve explore: error: --port {held}: 127.0.0.1:{held} is in use (another vaeserve?); "
        "choose another with --port\n",
    )
    result = explore("--target", default_server.target, "--host", "10.255.255.1")
    assert (result.returncode, result.stderr) == (
        2,
        "vaeserve explore: error: --host 10.255.255.1: not an address of this machine, cannot listen on it (Cannot "
        "assign requested address)\n",
    )
    result = explore("--target", default_server.target, "--host", "nonexistent.invalid")
    assert result.returncode == 2 and result.stderr.startswith(
        "vaeserve explore: error: --host nonexistent.invalid: cannot resolve it to an address to listen on ("
    )
    for value in ("-1", "65536", "nan", "", "eighty", "1e9"):
        result = explore("--target", default_server.target, "--port", value)
        assert result.returncode == 2 and f"argument --port: expected an integer in [0, 65535], got {value!r}" in (
            result.stderr
        )


def test_the_page_runs_only_its_own_script_and_style_and_in_no_frame(explorer: ExplorerServer) -> None:
    """Content-Security-Policy names the page's inline script and style by their hashes (the page test shows the
    page still works under it in Chromium), allows fetches and images only from here (and data URLs), and no
    framing; every answer carries it."""
    connection = http.client.HTTPConnection("127.0.0.1", explorer.server_port, timeout=60)
    connection.request("GET", "/")
    response = connection.getresponse()
    page = response.read()
    script = page.split(b"<script>")[1].split(b"</script>")[0]
    digest = base64.b64encode(hashlib.sha256(script).digest()).decode()
    policy = dict(part.strip().split(" ", 1) for part in response.getheader("Content-Security-Policy").split(";"))
    assert policy == {"default-src": "'none'", "script-src": f"'sha256-{digest}'", "style-src": policy["style-src"],
                      "img-src": "'self' data:", "connect-src": "'self'", "base-uri": "'none'",
                      "form-action": "'none'", "frame-ancestors": "'none'"}  # fmt: skip
    assert policy["style-src"].startswith("'sha256-") and page.count(b"<script") == page.count(b"<style") == 1
    for answer in (response, connection.request("GET", "/api/nothing") or connection.getresponse()):
        assert answer.getheader("X-Frame-Options") == "DENY" and answer.getheader("X-Content-Type-Options") == "nosniff"
        assert answer.getheader("Content-Security-Policy") == response.getheader("Content-Security-Policy")
    connection.close()


def test_malformed_http_is_answered_in_json_too(explorer: ExplorerServer) -> None:
    """http.server's own refusals (an unknown method, too many headers, a request line too long, a broken one)
    come as JSON with the usual headers, and never take the handler down."""
    cases = [
        (b"HEAD / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"HTTP/1.1 501 ", None),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", b"HTTP/1.1 431 ", {"error": "Too many headers"}),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", b"HTTP/1.1 414 ", {"error": "Request-URI Too Long"}),
    ]  # fmt: skip
    for sent, status, error in cases:
        with socket.create_connection(("127.0.0.1", explorer.server_port), timeout=30) as sock:
            sock.sendall(sent)
            head, _, body = raw_response(sock).partition(b"\r\n\r\n")
        assert head.startswith(status) and b"\r\nContent-Type: application/json; charset=utf-8\r\n" in head, head
        assert b"\r\nContent-Security-Policy: default-src 'none';" in head
        assert (json.loads(body) if error else body) == (error or b""), body  # HEAD: headers only
    # A request line that is not HTTP/1.x is answered as HTTP/0.9 (the body alone), as http.server does.
    with socket.create_connection(("127.0.0.1", explorer.server_port), timeout=30) as sock:
        sock.sendall(b"GET / HTTP/1.1 extra\r\n\r\n")
        assert json.loads(raw_response(sock)) == {"error": "Bad request version ('extra')"}
    assert request(explorer, "/api/model")[0] == 200


def raw_response(sock: socket.socket) -> bytes:
    """Everything the explorer sends on `sock` until it closes it (a bounded wait: the socket's own timeout)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def trickled_until_closed(sock: socket.socket, attempts: int) -> bool:
    """Sends a byte, then another each time the explorer has been quiet for the socket's timeout; whether it
    closed the connection within `attempts` bytes."""
    for _ in range(attempts):
        try:
            sock.sendall(b"G")
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:  # quiet: one more byte
            continue
        except ConnectionError:  # closed while a byte was on its way: a reset instead of an orderly end
            return True
    return False


@pytest.fixture(scope="module")
def strict(default_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A `vaeserve explore` process (the real command and its flags) that gives each request 1 s to arrive."""
    port = free_port()
    argv = [sys.executable, "-m", "vaeserve.cli", "explore", "--target", default_server.target, "--port", str(port),
            "--request-timeout-s", "1"]  # fmt: skip
    with ServerProcess(
        argv, tmp_path_factory.mktemp("strict") / "explore.log", port, explorer_ready, name="explore"
    ) as p:
        yield p


def test_a_slow_or_silent_client_is_cut_off_while_others_are_answered(strict: ServerProcess) -> None:
    explorer = SimpleNamespace(server_port=strict.port)
    with socket.create_connection(("127.0.0.1", strict.port), timeout=30) as half:
        # Headers and half the body, then nothing: the request is answered 408 after the timeout and closed...
        half.sendall(b"POST /api/sample HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n" + b" " * 500)  # fmt: skip
        # ... while another client is answered meanwhile.
        assert request(explorer, "/api/sample", GOOD)[0] == 200
        head, _, body = raw_response(half).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ") and json.loads(body) == {
        "error": "request body: 1000 bytes not received within 1 s (--request-timeout-s)"
    }
    # A client that connects and says nothing is disconnected.
    with socket.create_connection(("127.0.0.1", strict.port), timeout=30) as silent:
        assert raw_response(silent) == b""
    # One that trickles its request line a byte whenever the server has been quiet for 0.2 s (each read is quick,
    # the whole is not) is disconnected too: the deadline is per request, not per read.
    with socket.create_connection(("127.0.0.1", strict.port), timeout=0.2) as trickle:
        assert trickled_until_closed(trickle, attempts=200), "a client trickling its request line stayed connected"
    assert request(explorer, "/api/sample", GOOD)[0] == 200
    assert "Request timed out" in strict.output()


def test_connections_past_the_bound_are_refused_at_once(explorer: ExplorerServer) -> None:
    with ExplorerServer(("127.0.0.1", 0), explorer.explorer, max_connections=2) as bounded:
        thread = threading.Thread(target=bounded.serve_forever, daemon=True)
        thread.start()
        first = socket.create_connection(("127.0.0.1", bounded.server_port), timeout=30)
        with socket.create_connection(("127.0.0.1", bounded.server_port), timeout=30):
            # Connections are accepted in order: the third finds both places taken and is answered without a thread.
            with socket.create_connection(("127.0.0.1", bounded.server_port), timeout=30) as third:
                head, _, body = raw_response(third).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503 ") and b"\r\nRetry-After: 1\r\n" in head
            assert json.loads(body) == {"error": "busy: 2 connections open (--max-connections); try again"}
            first.close()
            wait_until(lambda: answered(bounded), "a request once a connection closed")
        bounded.shutdown()
        thread.join()


def answered(http: ExplorerServer) -> bool:
    try:
        return request(http, "/api/sample", GOOD)[0] == 200
    except ConnectionError:  # refused while the closed connection's thread is still ending
        return False


def test_requests_past_the_bound_wait_their_turn_then_get_503(explorer: ExplorerServer) -> None:
    """With --max-requests 1, a request whose server call hangs (a gRPC server that accepts and never answers)
    holds the only turn: the next waits --request-timeout-s for it, then is answered 503 with Retry-After."""
    with socket.create_server(("127.0.0.1", 0)) as silent, VaeClient(f"127.0.0.1:{silent.getsockname()[1]}",
                                                                       timeout=60) as hanging:  # fmt: skip
        silent.settimeout(30)
        with ExplorerServer(("127.0.0.1", 0), Explorer(hanging, *_the_rest(explorer.explorer)), max_requests=1,
                            request_timeout_s=1) as bounded:  # fmt: skip
            thread = threading.Thread(target=bounded.serve_forever, daemon=True)
            thread.start()
            held: list = []
            holder = threading.Thread(target=lambda: held.append(request(bounded, "/api/sample", GOOD)))
            holder.start()
            connection, _ = silent.accept()  # the holder is in its server call, in the only turn
            connection.settimeout(30)
            status, answer = request(bounded, "/api/sample", GOOD)
            assert (status, answer) == (503, {"error": "busy: 1 requests being answered (--max-requests) and none "
                                                       "finished within 1 s; try again"})  # fmt: skip
            connection.close()  # the server goes: the holder's call fails, its turn is free again
            silent.close()
            holder.join(60)
            assert held and held[0][0] == 502
            assert request(bounded, "/api/sample", GOOD)[0] == 502  # served in the turn, not refused for want of one
            bounded.shutdown()
            thread.join()


@pytest.mark.parametrize(
    ("flag", "bounds"),
    [("--max-requests", "an integer in [1, 64]"), ("--max-connections", "an integer in [1, 1024]"),
     ("--request-timeout-s", "a number in [0.1, 3600]")],
)  # fmt: skip
def test_explore_limits_are_bounded(flag: str, bounds: str) -> None:
    for value in ("0", "-1", "nan", "inf", "1e9", "", "many", "9" * 5000):
        argv = [sys.executable, "-m", "vaeserve.cli", "explore", "--target", "127.0.0.1:1", flag, value]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and f"argument {flag}: expected {bounds}, got {value!r}" in result.stderr, value
