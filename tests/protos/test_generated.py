"""The committed stubs are what protoc makes of vae.proto today, and they import under vaeserve only."""

from __future__ import annotations

from pathlib import Path

from vaeserve.protos import generate
from vaeserve.protos.vae.v1 import vae_pb2, vae_pb2_grpc


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    for fresh in generate.generate(tmp_path):
        committed = generate.PROTOS / fresh.relative_to(tmp_path)
        assert committed.read_bytes() == fresh.read_bytes(), f"{committed} is stale: run `make proto`"


def test_stubs_live_under_the_vaeserve_namespace() -> None:
    assert vae_pb2.DESCRIPTOR.package == "vae.v1"
    assert vae_pb2_grpc.VaeServiceStub.__module__ == "vaeserve.protos.vae.v1.vae_pb2_grpc"
    service = vae_pb2.DESCRIPTOR.services_by_name["VaeService"]
    assert {"Sample", "Encode", "Decode", "Reconstruct", "GetModelInfo"} <= set(service.methods_by_name)
