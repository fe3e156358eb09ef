"""The explorer's JSON API over real HTTP, in front of a real server: what each panel gets, and every field's
bounds against hostile values (each refusal one line naming the field)."""

from __future__ import annotations

import base64
import http.client
import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.harness import ServerProcess, free_port
from vaeserve.explore.app import MAX_BODY, Explorer, ExplorerServer
from vaeserve.server.client import VaeClient


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


def test_samples_follow_the_seed(explorer: ExplorerServer, server: ServerProcess) -> None:
    seven = request(explorer, "/api/sample", {"seed": 7, "temperature": 1.0, "n": 4})
    again = request(explorer, "/api/sample", {"seed": 7, "temperature": 1.0, "n": 4})
    other = request(explorer, "/api/sample", {"seed": 8, "temperature": 1.0, "n": 4})
    assert seven[0] == 200 and seven == again and other[1]["image"] != seven[1]["image"]
    with VaeClient(server.target) as client:
        images, _ = client.sample(4, seed=7)
    grid = picture(seven[1]["image"])
    assert grid.shape == (2 * 9 + 1, 2 * 9 + 1)
    np.testing.assert_array_equal(grid[1:9, 10:18], (images[1, 0] * 255).round().astype(np.uint8))
    assert request(explorer, "/api/sample", {"seed": None, "temperature": 0.5, "n": 1})[0] == 200


def test_interpolation_and_traversal_pictures(explorer: ExplorerServer, server: ServerProcess) -> None:
    status, answer = request(explorer, "/api/interpolate",
                             {"a": {"digit": 0}, "b": {"digit": 14}, "steps": 6, "spherical": True})  # fmt: skip
    assert status == 200 and picture(answer["image"]).shape == (10, 6 * 9 + 1)
    digits = explorer.explorer.digits
    with VaeClient(server.target) as client:
        expected, _ = client.interpolate(digits[0], digits[14], 6, spherical=True)
    np.testing.assert_array_equal(picture(answer["image"])[1:9, 1:9], (expected[0, 0] * 255).round())

    status, answer = request(explorer, "/api/traverse", {"image": {"digit": 6}, "span": 2.0, "steps": 5})
    traversal = picture(answer["image"])
    assert status == 200 and traversal.shape[0] == 8 * 9 + 1  # a row per latent dimension, labelled z1..z8
    assert traversal.shape[1] > 5 * 9 + 1


def test_score_places_an_image_among_the_bundled_digits(explorer: ExplorerServer, server: ServerProcess) -> None:
    status, digit = request(explorer, "/api/score", {"image": {"digit": 5}})
    assert status == 200 and digit["verdict"] == "typical" and digit["nll"] <= digit["highest"]
    with VaeClient(server.target) as client:
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
    assert status == 400 and answer["error"].startswith(error), answer


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
    with np.load(Path(sys.modules["vaeserve.explore.app"].__file__).parent / "digits.npz") as bundled:
        index = [i for label in range(10) for i in np.flatnonzero(labels == label)[:2]]
        np.testing.assert_array_equal(bundled["test_index"], index)
        np.testing.assert_array_equal(bundled["images"], test[index])
        np.testing.assert_array_equal(bundled["labels"], labels[index])


def test_explore_command_errors_are_one_line(server: ServerProcess, tmp_path: Path) -> None:
    def explore(*flags: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "vaeserve.cli", "explore", *flags]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    nobody = f"127.0.0.1:{free_port()}"
    result = explore("--target", nobody, "--port", "0")
    assert result.returncode == 2 and result.stderr.startswith(f"vaeserve explore: error: {nobody}: UNAVAILABLE: ")
    assert result.stderr.endswith(f"(is a server running at {nobody}? `make serve` starts one)\n")

    result = explore("--target", server.target, "--port", str(server.port))  # the gRPC server holds that port
    assert (result.returncode, result.stderr) == (
        2,
        f"vaeserve explore: error: --port {server.port}: 127.0.0.1:{server.port} is in use (another vaeserve?); "
        "choose another with --port\n",
    )
    result = explore("--target", server.target, "--host", "10.255.255.1")
    assert (result.returncode, result.stderr) == (
        2,
        "vaeserve explore: error: --host 10.255.255.1: not an address of this machine, cannot listen on it (Cannot "
        "assign requested address)\n",
    )
    result = explore("--target", server.target, "--host", "nonexistent.invalid")
    assert result.returncode == 2 and result.stderr.startswith(
        "vaeserve explore: error: --host nonexistent.invalid: cannot resolve it to an address to listen on ("
    )
    for value in ("-1", "65536", "nan", "", "eighty", "1e9"):
        result = explore("--target", server.target, "--port", value)
        assert result.returncode == 2 and f"argument --port: expected an integer in [0, 65535], got {value!r}" in (
            result.stderr
        )
