"""What NVIDIA's tritonclient does against a server, run in .venv-triton (tritonclient pins protobuf < 7).

Imports nothing of vaeserve. Prints one JSON object on stdout; arrays as nested lists.

    python triton_client.py checks HOST:PORT NAME ROWS      the protocol's calls, good and bad
    python triton_client.py infer-on-go HOST:PORT MODEL ROWS   prints "ready", sends one infer on a stdin line
    python triton_client.py repository HOST:PORT NAME TOKEN ACTION...   the repository extension's calls in turn:
        index, load, unload, versions (NAME-encoder's metadata versions); TOKEN "-" sends none
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException


def images(rows: int, shape: list[int]) -> np.ndarray:
    return np.random.default_rng(0).random((rows, *shape), dtype=np.float32)


def infer(client: triton.InferenceServerClient, model: str, name: str, data: np.ndarray, datatype: str,
          outputs: list[str] | None = None, parameters: dict | None = None) -> dict:  # fmt: skip
    tensor = triton.InferInput(name, list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    requested = [triton.InferRequestedOutput(o) for o in outputs] if outputs else None
    result = client.infer(model, [tensor], outputs=requested, parameters=parameters)
    response = result.get_response()
    return {o.name: result.as_numpy(o.name).tolist() for o in response.outputs}


def error(call) -> dict:
    try:
        call()
    except InferenceServerException as exc:
        return {"status": exc.status(), "message": exc.message()}
    return {"status": "OK"}


def checks(target: str, name: str, rows: int) -> dict:
    client = triton.InferenceServerClient(target)
    encoder, decoder = f"{name}-encoder", f"{name}-decoder"
    meta = {m: client.get_model_metadata(m, as_json=True) for m in (encoder, decoder)}
    shape = [int(d) for d in meta[encoder]["inputs"][0]["shape"][1:]]
    latent_dim = int(meta[decoder]["inputs"][0]["shape"][1])
    x = images(rows, shape)
    z = np.random.default_rng(1).standard_normal((rows, latent_dim), dtype=np.float32)
    pixels = np.rint(x * 255).astype(np.uint8)
    return {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "models_ready": [client.is_model_ready(m) for m in (encoder, decoder)],
        "unknown_model_ready": error(lambda: client.is_model_ready("nope")),
        "server_metadata": client.get_server_metadata(as_json=True),
        "model_metadata": meta,
        "images": x.tolist(),
        "latents": z.tolist(),
        "encoded": infer(client, encoder, "image", x, "FP32"),
        "encoded_uint8": infer(client, encoder, "image", pixels, "UINT8", ["mean"]),
        "seeded": [infer(client, encoder, "image", x, "FP32", ["latents"], {"seed": 7}) for _ in range(2)],
        "decoded": infer(client, decoder, "latent", z, "FP32"),
        "bad_shape": error(lambda: infer(client, encoder, "image", x[:, :, :-1], "FP32")),
        "bad_name": error(lambda: infer(client, decoder, "z", z, "FP32")),
        "bad_datatype": error(lambda: infer(client, decoder, "latent", z.astype(np.float64), "FP64")),
        "bad_output": error(lambda: infer(client, decoder, "latent", z, "FP32", ["logits"])),
        "bad_values": error(lambda: infer(client, encoder, "image", x * 3, "FP32")),
        "bad_seed": error(lambda: infer(client, encoder, "image", x, "FP32", None, {"seed": "seven"})),
    }


def infer_on_go(target: str, model: str, rows: int) -> dict:
    client = triton.InferenceServerClient(target)
    meta = client.get_model_metadata(model, as_json=True)
    shape = [int(d) for d in meta["inputs"][0]["shape"][1:]]
    print("ready", flush=True)
    sys.stdin.readline()
    return infer(client, model, meta["inputs"][0]["name"], images(rows, shape), "FP32", [meta["outputs"][0]["name"]])


def repository(target: str, name: str, token: str, actions: list[str]) -> list:
    client = triton.InferenceServerClient(target)
    headers = {"authorization": f"Bearer {token}"} if token != "-" else None
    calls = {
        "index": lambda: client.get_model_repository_index(headers=headers, as_json=True).get("models", []),
        "load": lambda: client.load_model(name, headers=headers),
        "unload": lambda: client.unload_model(name, headers=headers),
        "versions": lambda: client.get_model_metadata(f"{name}-encoder", headers=headers, as_json=True)["versions"],
    }
    results = []
    for action in actions:
        try:
            results.append({"status": "OK", "result": calls[action]()})
        except InferenceServerException as exc:
            results.append({"status": exc.status(), "message": exc.message()})
    return results


if __name__ == "__main__":
    command, target, name = sys.argv[1:4]
    if command == "repository":
        result = repository(target, name, sys.argv[4], sys.argv[5:])
    elif command == "checks":
        result = checks(target, name, int(sys.argv[4]))
    else:
        result = infer_on_go(target, name, int(sys.argv[4]))
    print(json.dumps(result))
