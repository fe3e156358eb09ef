"""Regenerates the Python stubs next to vae.proto (`make proto`; a test checks they are current).

protoc's virtual path `vaeserve/protos=protos` makes the generated imports read
`from vaeserve.protos.vae.v1 import vae_pb2`, so no top-level `vae` package is installed.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

PROTOS = Path(__file__).resolve().parent
SOURCES = ["vae/v1/vae.proto", "inference/grpc_service.proto"]


def generate(out_dir: Path) -> list[Path]:
    """Writes the stubs for every source under out_dir (mirroring protos/); returns their paths."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{include}",
            f"-Ivaeserve/protos={PROTOS}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(PROTOS / s) for s in SOURCES],
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        written = []
        for path in sorted((Path(tmp) / "vaeserve" / "protos").rglob("*.py*")):
            target = out_dir / path.relative_to(Path(tmp) / "vaeserve" / "protos")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
            written.append(target)
        return written


if __name__ == "__main__":
    for p in generate(PROTOS):
        print(p.relative_to(PROTOS.parent))
    sys.exit(0)
