"""The model repository: REPO/NAME/VERSION/{encoder.onnx, decoder.onnx, model.json}, read and checked.

The repository format is the contract between `vaeserve export` (its writer) and `vaeserve serve` (its
reader), so it lives here, beside both, and imports neither torch nor onnx: only the standard library, and
numpy and onnxruntime once a graph is checked. `verify_version` re-checks what the export wrote (hashes, graph
signatures, metadata) and returns a `ModelVersion`; any mismatch is a `RepositoryError` naming the file.

Graph contract (batch is dynamic):
    encoder.onnx  image float32 [batch, C, H, W] in [0, 1]  ->  mean, log_variance float32 [batch, latent_dim]
    decoder.onnx  latent float32 [batch, latent_dim]        ->  image float32 [batch, C, H, W] in [0, 1],
                                                                logits float32 [batch, C, H, W] (image = sigmoid)
Versions exported before the logits output existed have `image` alone; model.json's graphs.decoder.outputs says
which (`ModelVersion.has_logits`), and only scoring needs it.
A version may also hold variants of the pair (model.json "variants"): ENCODER.KIND.onnx / DECODER.KIND.onnx with
the same signature, KIND one of VARIANT_KINDS. "plain" names the fp32 pair itself.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaeserve.errors import VaeserveError

FORMAT = "vaeserve-model"
FORMAT_VERSION = 1
MODEL_JSON = "model.json"
# The graphs and their tensors as the exported ONNX files name them: the contract, named here once and imported by
# the exporter and the server (which adds its own graphs and tensors in server/graphs.py).
ENCODER, DECODER = "encoder", "decoder"
GRAPHS = (ENCODER, DECODER)
IMAGE, LATENT = "image", "latent"  # the encoder's input and the decoder's output; the decoder's input
MEAN, LOG_VARIANCE = "mean", "log_variance"  # the encoder's outputs: q(z|x)
LOGITS = "logits"  # the decoder's second output: image = sigmoid(logits)
PLAIN = "plain"
VARIANT_KINDS = ("ort", "fp16", "int8")  # what `vaeserve export --variants` can build
VARIANTS = (PLAIN, *VARIANT_KINDS)
LIKELIHOODS = ("bernoulli", "gaussian")  # vaeserve.training.model.LIKELIHOODS, not imported: that module needs torch
# The keys every graph's metadata_props carries; model.json["metadata"] holds the same strings.
METADATA_KEYS = ("latent_dim", "image_shape", "likelihood", "dataset", "vaeserve_version", "test_neg_elbo")


class RepositoryError(VaeserveError):
    """A model repository, version folder or graph that is missing or does not match its model.json."""


@dataclass(frozen=True)
class ModelVersion:
    path: Path
    name: str
    version: int
    latent_dim: int
    image_shape: tuple[int, int, int]  # [C, H, W]
    likelihood: str
    metadata: dict[str, str]  # the graphs' metadata_props (identical in both)
    variant: str  # the pair encoder_path and decoder_path point to
    has_logits: bool  # the decoder also returns its logits (every export since the Score RPC)
    encoder_path: Path
    decoder_path: Path
    info: dict[str, Any]  # model.json, every field checked as MODEL_JSON_TYPES says
    log_sigma: float | None = None  # the Gaussian p(x|z)'s log standard deviation; None for Bernoulli

    @property
    def variants(self) -> tuple[str, ...]:
        """Every variant this version holds, "plain" first."""
        return (PLAIN, *self.info["variants"])


# model.json's one schema, for its writer (export, through `write_model_json`) and its readers: every field and its
# JSON types, checked with type(), not isinstance (JSON true and false are Python bools, which isinstance counts as
# ints). The fields every reader relies on, required:
MODEL_JSON_TYPES: dict[str, type] = {"name": str, "version": int, "latent_dim": int, "image_shape": list,
                                     "likelihood": str, "metadata": dict, "graphs": dict, "variants": dict}  # fmt: skip
# Provenance and measurements: every export writes them (`export --variants` alone variant_measurements); a reader
# checks the type of those present (an older export may lack some). log_sigma, a number for Gaussian models and
# null otherwise, is also checked with the likelihood.
NONE = type(None)
MODEL_JSON_RECORDS: dict[str, tuple[type, ...]] = {
    "log_sigma": (int, float, NONE), "created": (str,), "dataset": (dict,), "vaeserve_version": (str,),
    "test_neg_elbo": (int, float, NONE), "opset": (int,), "source_checkpoint": (dict,), "model_config": (dict,),
    "parity_max_abs_diff": (dict,), "variant_measurements": (dict,),
}  # fmt: skip
MODEL_JSON_OPTIONAL = ("variant_measurements",)
MAX_LOG_SIGMA = 20.0  # e^20: far beyond any pixel scale; beyond it the likelihood's exp() overflows float64


def graph_signatures(
    latent_dim: int, image_shape: tuple[int, ...], logits: bool = True
) -> dict[str, dict[str, dict[str, list]]]:
    """Expected {graph: {"inputs"|"outputs": {tensor name: shape}}}; None marks the dynamic batch axis."""
    image = [None, *image_shape]
    latent = [None, latent_dim]
    decoded = {IMAGE: image, LOGITS: image} if logits else {IMAGE: image}
    return {
        ENCODER: {"inputs": {IMAGE: image}, "outputs": {MEAN: latent, LOG_VARIANCE: latent}},
        DECODER: {"inputs": {LATENT: latent}, "outputs": decoded},
    }


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def version_numbers(repo: str | Path, name: str) -> list[int]:
    """Every integer-named folder under REPO/NAME, sorted (complete or not, so a number is never reused)."""
    folder = Path(repo) / name
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def resolve_version(repo: str | Path, name: str, version: int | str | None = "latest") -> Path:
    """REPO/NAME/VERSION; `None` or "latest" picks the highest version that has a model.json."""
    folder = Path(repo) / name
    if not folder.is_dir():
        raise RepositoryError(f"{folder}: model {name!r} not found: {_missing(Path(repo), name)}")
    if version is None or version == "latest":
        complete = [v for v in version_numbers(repo, name) if (folder / str(v) / MODEL_JSON).is_file()]
        if not complete:
            raise RepositoryError(f"{folder}: no version with a {MODEL_JSON} (export one with `vaeserve export`)")
        return folder / str(complete[-1])
    if isinstance(version, str) and not version.isdigit():
        raise RepositoryError(f"model version must be a positive integer or 'latest', got {version!r}")
    path = folder / str(int(version))
    if not path.is_dir():
        available = ", ".join(map(str, version_numbers(repo, name))) or "none"
        raise RepositoryError(f"{path}: version {int(version)} not found (available: {available})")
    return path


def _missing(repo: Path, name: str) -> str:
    """Why REPO/NAME is not there, and how to make it."""
    make = "make model" + (f" REPO={repo}" if repo != Path("models") else "")
    make += f" NAME={name}" if name != "vae" else ""
    create = (f"create a model with `{make}`, or `vaeserve train --out runs/default` then `vaeserve export "
              f"--checkpoint runs/default/best.pt --repo {repo} --name {name}`")  # fmt: skip
    if not repo.is_dir():
        return f"the repository folder {repo.absolute()} does not exist; {create}"
    models = sorted(p.name for p in repo.iterdir() if p.is_dir())
    return f"{repo.absolute()} holds {', '.join(models) if models else 'no models'}; {create}"


def open_version(
    repo: str | Path,
    name: str,
    version: int | str | None = "latest",
    variants: tuple[str, ...] | None = None,
    skipped: Callable[[str], None] | None = None,
) -> ModelVersion:
    """The verified REPO/NAME/VERSION. For "latest" (or None): the newest version that verifies, each newer one
    that does not reported to `skipped` with its reason, so one bad export cannot take a server down; when none
    verifies, the error names every version's reason."""
    if version is not None and version != "latest":
        return verify_version(resolve_version(repo, name, version), variants)
    newest = resolve_version(repo, name, version)  # errors for a missing model or one without a complete version
    reasons = []
    for number in reversed([v for v in version_numbers(repo, name) if v <= int(newest.name)]):
        path = newest.parent / str(number)
        if not (path / MODEL_JSON).is_file():
            continue
        try:
            return verify_version(path, variants)
        except RepositoryError as exc:
            reasons.append(str(exc))
            if skipped is not None:
                skipped(f"version {number} skipped: {exc}")
    raise RepositoryError(f"{newest.parent}: no version verifies: " + "; ".join(reasons))


def verify_version(path: str | Path, variants: tuple[str, ...] | None = None) -> ModelVersion:
    """Re-check a version folder REPO/NAME/VERSION; the name and number come from the path. `variants`: the
    graph pairs to check (the first is the one the ModelVersion points to); None checks every pair it holds."""
    path = Path(path)
    if not path.name.isdigit():
        raise RepositoryError(f"{path}: a version folder is named by its integer version (REPO/NAME/VERSION)")
    _inside(path, path.parent.parent, "the version folder")
    return check_version(path, path.parent.name, int(path.name), variants)


def _inside(path: Path, root: Path, what: str) -> None:
    """Refuses a path that leaves `root` once links are followed: a repository serves only what it holds."""
    real, real_root = path.resolve(), root.resolve()
    if real != real_root and real_root not in real.parents:
        raise RepositoryError(f"{path}: {what} resolves to {real}, outside {real_root} (a link out of the repository)")


def check_version(path: Path, name: str, version: int, variants: tuple[str, ...] | None = None) -> ModelVersion:
    """Everything `verify_version` checks, against an expected name and version (export verifies its
    temporary folder with this before renaming it into place)."""
    info = _read_model_json(path)
    where = path / MODEL_JSON
    for key, expected in (("name", name), ("version", version)):
        if info[key] != expected:
            raise RepositoryError(f"{where}: {key} is {info[key]!r} but the folder says {expected!r}")
    latent_dim, image_shape, likelihood = info["latent_dim"], tuple(info["image_shape"]), info["likelihood"]
    metadata = info["metadata"]
    expected_metadata = {"latent_dim": str(latent_dim), "image_shape": json.dumps(list(image_shape)),
                         "likelihood": likelihood}  # fmt: skip
    for key in METADATA_KEYS:
        if not isinstance(metadata.get(key), str):
            raise RepositoryError(f"{where}: metadata.{key} is missing or not a string")
    for key, value in expected_metadata.items():
        if metadata[key] != value:
            raise RepositoryError(f"{where}: metadata.{key} is {metadata[key]!r} but {key} is {value!r}")

    held = (PLAIN, *info["variants"])
    for variant in variants or ():
        if variant not in held:
            raise RepositoryError(
                f"{where}: version {version} has no {variant!r} variant (it has: {', '.join(held)}; "
                f"`vaeserve export --variants` builds them)"
            )
    has_logits = LOGITS in info["graphs"][DECODER].get("outputs", {})
    signatures = graph_signatures(latent_dim, image_shape, has_logits)
    paths: dict[str, dict[str, Path]] = {}
    for variant in variants or held:
        entries = info["graphs"] if variant == PLAIN else info["variants"][variant]
        prefix = "graphs" if variant == PLAIN else f"variants.{variant}"
        paths[variant] = {graph: _check_graph(path, entries[graph], signatures[graph], metadata, f"{prefix}.{graph}")
                          for graph in GRAPHS}  # fmt: skip
    served = (variants or held)[0]
    return ModelVersion(path=path, name=name, version=version, latent_dim=latent_dim, image_shape=image_shape,
                        likelihood=likelihood, metadata=dict(metadata), variant=served, has_logits=has_logits,
                        encoder_path=paths[served][ENCODER], decoder_path=paths[served][DECODER],
                        info=info, log_sigma=info.get("log_sigma"))  # fmt: skip


def _read_model_json(path: Path) -> dict[str, Any]:
    where = path / MODEL_JSON
    if not path.is_dir():
        raise RepositoryError(f"{path}: version folder not found")
    if not where.is_file():
        raise RepositoryError(f"{where}: file not found")
    _inside(where, path, "model.json")
    try:
        info = json.loads(where.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RepositoryError(f"{where}: not valid JSON ({exc})") from exc
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise RepositoryError(f"{where}: not a vaeserve model description (no format={FORMAT!r} marker)")
    if info.get("format_version") != FORMAT_VERSION:
        raise RepositoryError(f"{where}: format_version {info.get('format_version')!r} is not {FORMAT_VERSION}")
    _check_required(info, where)
    shape = info["image_shape"]
    if len(shape) != 3 or not all(type(s) is int and s > 0 for s in shape) or info["latent_dim"] < 1:
        raise RepositoryError(f"{where}: image_shape {shape} / latent_dim {info['latent_dim']} are not valid")
    if info["likelihood"] not in LIKELIHOODS:
        raise RepositoryError(f"{where}: likelihood {info['likelihood']!r} is not one of {', '.join(LIKELIHOODS)}")
    log_sigma = info.get("log_sigma")
    if info["likelihood"] == "gaussian":
        # Scoring divides by exp(2 log_sigma): a missing or non-finite value would fail every Score batch later.
        if type(log_sigma) not in (int, float) or not math.isfinite(log_sigma) or abs(log_sigma) > MAX_LOG_SIGMA:
            raise RepositoryError(f"{where}: log_sigma {log_sigma!r}: a Gaussian model needs a finite number in "
                                  f"[-{MAX_LOG_SIGMA:g}, {MAX_LOG_SIGMA:g}]")  # fmt: skip
    elif log_sigma is not None:
        raise RepositoryError(f"{where}: log_sigma {log_sigma!r}: only a Gaussian model has one (null here)")
    _check_records(info, where)
    for graph in GRAPHS:
        if not isinstance(info["graphs"].get(graph), dict):
            raise RepositoryError(f"{where}: graphs.{graph} is missing")
    for variant, graphs in info["variants"].items():
        if variant not in VARIANT_KINDS:
            raise RepositoryError(f"{where}: variants.{variant}: unknown variant (known: {', '.join(VARIANT_KINDS)})")
        if not isinstance(graphs, dict) or not all(isinstance(graphs.get(g), dict) for g in GRAPHS):
            raise RepositoryError(f"{where}: variants.{variant} needs an encoder and a decoder entry")
    return info


def _check_required(info: dict[str, Any], where: Path) -> None:
    for key, kind in MODEL_JSON_TYPES.items():
        if type(info.get(key)) is not kind:
            raise RepositoryError(f"{where}: {key} is missing or not a {kind.__name__}")


def _check_records(info: dict[str, Any], where: Path) -> None:
    for key, kinds in MODEL_JSON_RECORDS.items():
        if key in info and type(info[key]) not in kinds:
            names = " or ".join("null" if kind is NONE else kind.__name__ for kind in kinds)
            raise RepositoryError(f"{where}: {key} is not a {names}")


def write_model_json(folder: Path, fields: dict[str, Any]) -> None:
    """Writes FOLDER/model.json: the format marker and `fields`, which must be the schema's, every one of each kind
    (a field no reader knows is an error here, not a surprise later)."""
    where = folder / MODEL_JSON
    info = {"format": FORMAT, "format_version": FORMAT_VERSION, **fields}
    known = {"format", "format_version", *MODEL_JSON_TYPES, *MODEL_JSON_RECORDS}
    if unknown := sorted(info.keys() - known):
        raise RepositoryError(f"{where}: {', '.join(unknown)}: not in model.json's schema (repository.py)")
    if missing := sorted(known - info.keys() - set(MODEL_JSON_OPTIONAL)):
        raise RepositoryError(f"{where}: {', '.join(missing)}: missing")
    if (info["format"], info["format_version"]) != (FORMAT, FORMAT_VERSION):
        raise RepositoryError(f"{where}: format {info['format']!r} {info['format_version']!r} is not this one's")
    _check_required(info, where)
    _check_records(info, where)
    where.write_text(json.dumps(info, indent=2) + "\n")


def _check_graph(
    folder: Path, entry: dict, signature: dict[str, dict[str, list]], metadata: dict[str, str], field: str
) -> Path:
    """One graph file: its SHA-256, then what onnxruntime sees (input/output names, dtypes, shapes, metadata)."""
    import numpy as np  # here, so the CLI can import the format's names without loading onnxruntime
    import onnxruntime as ort

    file = entry.get("file")
    if not isinstance(file, str) or Path(file).name != file:
        raise RepositoryError(f"{folder / MODEL_JSON}: {field}.file must be a file name in the version folder")
    path = folder / file
    if not path.is_file():
        raise RepositoryError(f"{path}: graph file not found")
    _inside(path, folder, "the graph file")
    digest = sha256_file(path)
    if digest != entry.get("sha256"):
        raise RepositoryError(f"{path}: SHA-256 {digest} does not match model.json ({entry.get('sha256')})")

    try:
        # No memory arena: this session runs once, at batch 2, and a server verifying a new version while it
        # serves should not hold an arena's worth of memory for it.
        options = ort.SessionOptions()
        options.enable_cpu_mem_arena = False
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unloadable graphs
        raise RepositoryError(f"{path}: onnxruntime cannot load the graph ({exc})") from exc
    for kind, tensors in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
        expected = signature[kind]
        names = [t.name for t in tensors]
        if names != list(expected):
            raise RepositoryError(f"{path}: {kind} are {names}, expected {list(expected)}")
        for tensor in tensors:
            if tensor.type != "tensor(float)":
                raise RepositoryError(f"{path}: {tensor.name} has type {tensor.type}, expected tensor(float)")
            # onnxruntime reports a symbolic axis as a string (or None): that is the dynamic batch.
            shape = [None if not isinstance(d, int) else d for d in tensor.shape]
            if shape != expected[tensor.name]:
                want = ["batch" if d is None else d for d in expected[tensor.name]]
                raise RepositoryError(f"{path}: {tensor.name} has shape {tensor.shape}, expected {want}")
    # One run at batch 2 proves the declared shapes are the computed ones and the batch axis really is free.
    feed = {name: np.zeros([2, *shape[1:]], np.float32) for name, shape in signature["inputs"].items()}
    try:
        results = session.run(None, feed)
    except Exception as exc:
        raise RepositoryError(f"{path}: onnxruntime cannot run the graph at batch 2 ({exc})") from exc
    for (name, shape), result in zip(signature["outputs"].items(), results, strict=True):
        if list(result.shape) != [2, *shape[1:]] or result.dtype != np.float32:
            raise RepositoryError(f"{path}: {name} came out {result.dtype} {list(result.shape)} at batch 2")
    graph_metadata = dict(session.get_modelmeta().custom_metadata_map)
    if graph_metadata != metadata:
        diff = sorted(k for k in graph_metadata.keys() | metadata.keys() if graph_metadata.get(k) != metadata.get(k))
        raise RepositoryError(f"{path}: metadata_props differ from model.json in {diff}")
    return path
