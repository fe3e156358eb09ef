"""`verify_version` / `vaeserve export --verify` on good and damaged versions, and `resolve_version`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from vaeserve.cli import main as vaeserve
from vaeserve.repository import (
    MODEL_JSON_OPTIONAL,
    MODEL_JSON_RECORDS,
    MODEL_JSON_TYPES,
    RepositoryError,
    open_version,
    resolve_version,
    sha256_file,
    verify_version,
    write_model_json,
)


@pytest.fixture
def version(exported: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the exported MLP version, REPO/vae/1, free to damage."""
    copy = tmp_path / "repo" / "vae" / "1"
    shutil.copytree(exported["mlp"], copy)
    return copy


def rewrite_graph(folder: Path, graph: str, edit) -> None:
    """Edit a graph and re-record its hash, so only the check under test can catch the change."""
    path = folder / f"{graph}.onnx"
    model = onnx.load(path)
    edit(model)
    onnx.save_model(model, path)
    edit_json(folder, lambda info: info["graphs"][graph].update(sha256=sha256_file(path)))


def edit_json(folder: Path, edit) -> None:
    info = json.loads((folder / "model.json").read_text())
    edit(info)
    (folder / "model.json").write_text(json.dumps(info))


def verify_cli(folder: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = vaeserve(["export", "--verify", str(folder)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_verify_accepts_an_exported_version(version: Path, capsys: pytest.CaptureFixture) -> None:
    model = verify_version(version)
    assert (model.name, model.version, model.latent_dim, model.image_shape) == ("vae", 1, 8, (1, 8, 8))
    assert model.likelihood == "bernoulli" and model.metadata["dataset"] == "digits"
    assert model.encoder_path == version / "encoder.onnx" and model.decoder_path == version / "decoder.onnx"
    assert model.info["graphs"]["encoder"]["sha256"] == sha256_file(model.encoder_path)
    assert verify_cli(version, capsys) == (0, f"{version}: ok (vae version 1)\n")


def rename_input(model: onnx.ModelProto) -> None:
    model.graph.input[0].name = "pixels"
    for node in model.graph.node:
        node.input[:] = ["pixels" if name == "image" else name for name in node.input]


def set_metadata(key: str, value: str):
    def edit(model: onnx.ModelProto) -> None:
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, key: value})

    return edit


def tamper_bytes(folder: Path) -> None:
    path = folder / "decoder.onnx"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "tampered bytes": (tamper_bytes, "decoder.onnx: SHA-256"),
    "missing graph": (lambda f: (f / "encoder.onnx").unlink(), "encoder.onnx: graph file not found"),
    "missing model.json": (lambda f: (f / "model.json").unlink(), "model.json: file not found"),
    "model.json not JSON": (lambda f: (f / "model.json").write_text("{"), "model.json: not valid JSON"),
    "wrong input name": (lambda f: rewrite_graph(f, "encoder", rename_input),
                         "encoder.onnx: inputs are ['pixels'], expected ['image']"),
    "graph metadata differs": (lambda f: rewrite_graph(f, "decoder", set_metadata("latent_dim", "9")),
                               "decoder.onnx: metadata_props differ from model.json in ['latent_dim']"),
    "model.json metadata differs": (lambda f: edit_json(f, lambda i: i["metadata"].update(dataset="mnist")),
                                    "encoder.onnx: metadata_props differ from model.json in ['dataset']"),
    "model.json shape differs": (lambda f: edit_json(f, lambda i: i.update(latent_dim=9)),
                                 "metadata.latent_dim is '8' but latent_dim is '9'"),
    "unknown likelihood": (lambda f: edit_json(f, lambda i: i.update(likelihood="poisson")),
                           "model.json: likelihood 'poisson' is not one of bernoulli, gaussian"),
    "version differs from folder": (lambda f: edit_json(f, lambda i: i.update(version=2)),
                                    "model.json: version is 2 but the folder says 1"),
}  # fmt: skip


@pytest.mark.parametrize("damage", DAMAGE)
def test_verify_rejects_a_damaged_version(damage: str, version: Path, capsys: pytest.CaptureFixture) -> None:
    apply, message = DAMAGE[damage]
    apply(version)
    with pytest.raises(RepositoryError, match=re.escape(message)):
        verify_version(version)
    code, output = verify_cli(version, capsys)
    assert code == 2 and output.startswith("vaeserve export: error: ") and message in output
    assert "Traceback" not in output


def test_verify_rejects_a_graph_with_a_fixed_batch(version: Path) -> None:
    def fix_batch(model: onnx.ModelProto) -> None:
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 7

    rewrite_graph(version, "encoder", fix_batch)
    with pytest.raises(RepositoryError, match=r"image has shape \[7, 1, 8, 8\], expected \['batch', 1, 8, 8\]"):
        verify_version(version)


def test_resolve_version_picks_latest_complete_and_named_versions(version: Path) -> None:
    repo = version.parent.parent
    shutil.copytree(version, repo / "vae" / "3")
    (repo / "vae" / "7").mkdir()  # incomplete: no model.json
    (repo / "vae" / ".export-8-abc").mkdir()  # an export in progress
    assert resolve_version(repo, "vae") == resolve_version(repo, "vae", None) == repo / "vae" / "3"
    assert resolve_version(repo, "vae", 1) == resolve_version(repo, "vae", "1") == version
    with pytest.raises(RepositoryError, match=r"vae/2: version 2 not found \(available: 1, 3, 7\)"):
        resolve_version(repo, "vae", 2)
    with pytest.raises(RepositoryError, match="positive integer or 'latest', got 'newest'"):
        resolve_version(repo, "vae", "newest")
    with pytest.raises(RepositoryError, match="model 'other' not found"):
        resolve_version(repo, "other")


def test_repository_knows_the_training_likelihoods() -> None:
    from vaeserve import repository
    from vaeserve.training import model

    assert repository.LIKELIHOODS == model.LIKELIHOODS


def test_repository_reader_imports_neither_torch_nor_onnx() -> None:
    code = ("import sys, vaeserve.repository; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'onnx', 'onnxscript'}))")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_links_out_of_the_repository_are_refused(version: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    shutil.copytree(version, outside)
    repo = version.parent.parent
    (repo / "vae" / "2").symlink_to(outside)  # a whole version folder that lives elsewhere
    with pytest.raises(RepositoryError, match=r"vae/2: the version folder resolves to .*elsewhere, outside"):
        verify_version(repo / "vae" / "2")
    (version / "decoder.onnx").unlink()
    (version / "decoder.onnx").symlink_to(outside / "decoder.onnx")  # one graph file
    with pytest.raises(RepositoryError, match=r"decoder.onnx: the graph file resolves to .*elsewhere/decoder.onnx"):
        verify_version(version)
    (version / "decoder.onnx").unlink()
    shutil.copy(outside / "decoder.onnx", version / "decoder.onnx")
    inside = version / "spare.onnx"  # a link that stays inside the version folder is fine
    shutil.copy(outside / "encoder.onnx", inside)
    (version / "encoder.onnx").unlink()
    (version / "encoder.onnx").symlink_to(inside)
    assert verify_version(version).version == 1


@pytest.mark.parametrize(("key", "value"), [("version", True), ("latent_dim", 8.0), ("image_shape", [1, 8, True])])
def test_model_json_types_are_checked_strictly(version: Path, key: str, value: object) -> None:
    edit_json(version, lambda info: info.update({key: value}))  # JSON true is a Python bool, which is an int
    with pytest.raises(RepositoryError, match=f"model.json: {key}"):
        verify_version(version)


def test_latest_is_the_newest_version_that_verifies(version: Path) -> None:
    repo = version.parent.parent
    shutil.copytree(version, repo / "vae" / "2")
    edit_json(repo / "vae" / "2", lambda info: info.update(version=2))
    tamper_bytes(repo / "vae" / "2")
    skipped: list[str] = []
    model = open_version(repo, "vae", "latest", skipped=skipped.append)
    assert model.version == 1
    assert len(skipped) == 1 and skipped[0].startswith("version 2 skipped: ") and "decoder.onnx: SHA-256" in skipped[0]
    with pytest.raises(RepositoryError, match=r"decoder\.onnx: SHA-256"):
        open_version(repo, "vae", 2)  # a version asked for by number is that version or an error
    tamper_bytes(version)
    with pytest.raises(
        RepositoryError, match=r"vae: no version verifies: .*vae/2/decoder.onnx: SHA-256.*vae/1/decoder"
    ):
        open_version(repo, "vae")


@pytest.mark.parametrize("value", [None, "0.25", float("nan"), float("inf"), 1e9, True])
def test_a_gaussian_model_without_a_usable_log_sigma_is_refused_on_read(
    gaussian_model_repo: Path, tmp_path: Path, value: object
) -> None:
    """Scoring needs log_sigma: a Gaussian version without a finite one is refused when read, naming the field,
    not when its first Score batch fails."""
    version = tmp_path / "vae" / "1"
    shutil.copytree(gaussian_model_repo / "vae" / "1", version)
    assert verify_version(version).log_sigma == json.loads((version / "model.json").read_text())["log_sigma"]
    edit_json(version, lambda info: info.update(log_sigma=value))
    with pytest.raises(RepositoryError, match=r"model\.json: log_sigma .*: a Gaussian model needs a finite number"):
        verify_version(version)


def test_a_bernoulli_model_with_a_log_sigma_is_refused(version: Path) -> None:
    assert verify_version(version).log_sigma is None
    edit_json(version, lambda info: info.update(log_sigma=0.5))
    with pytest.raises(RepositoryError, match=re.escape("model.json: log_sigma 0.5: only a Gaussian model has one")):
        verify_version(version)


@pytest.mark.parametrize("kind", ["mlp", "gaussian"])
def test_export_writes_exactly_the_schema_and_the_reader_accepts_it(exported: dict[str, Path], kind: str) -> None:
    info = json.loads((exported[kind] / "model.json").read_text())
    schema = {"format", "format_version", *MODEL_JSON_TYPES, *MODEL_JSON_RECORDS}
    assert set(info) == schema - set(MODEL_JSON_OPTIONAL)  # every field, and none the reader does not know
    assert verify_version(exported[kind]).info == info


def test_model_json_cannot_be_written_with_a_field_the_schema_lacks(version: Path) -> None:
    """The writer's check is the reader's: an unknown field, a missing one or a wrong type is refused on write."""
    info = json.loads((version / "model.json").read_text())
    cases = {
        "unknown": ({**info, "temperature": 1.0}, "temperature: not in model.json's schema"),
        "missing": ({k: v for k, v in info.items() if k != "opset"}, "opset: missing"),
        "required type": ({**info, "latent_dim": "8"}, "latent_dim is missing or not a int"),
        "record type": ({**info, "created": 2026}, "created is not a str"),
        "nullable record": ({**info, "test_neg_elbo": "low"}, "test_neg_elbo is not a int or float or null"),
        "format": ({**info, "format_version": 2}, "format 'vaeserve-model' 2 is not this one's"),
        "empty": ({}, "missing"),
    }
    before = (version / "model.json").read_bytes()
    for case, (fields, error) in cases.items():
        with pytest.raises(RepositoryError, match=re.escape(error)):
            write_model_json(version, fields)
        assert (version / "model.json").read_bytes() == before, case  # nothing written
    write_model_json(version, {**info, "variant_measurements": {}})  # the one optional field
    assert verify_version(version).info["variant_measurements"] == {}
    edit_json(version, lambda i: i.update(dataset=[]))  # a reader checks the records present too
    with pytest.raises(RepositoryError, match=re.escape("model.json: dataset is not a dict")):
        verify_version(version)
