"""vaeserve: train a VAE, export it to ONNX, serve it over gRPC.

The client's stable import path: `from vaeserve import VaeClient` (also AsyncVaeClient, read_images, write_grid).
They load on first use, so `import vaeserve` (and `vaeserve --help`) stays instant and needs no grpc.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_LAZY = {
    "VaeClient": "vaeserve.client.api",
    "AsyncVaeClient": "vaeserve.client.api",
    "write_grid": "vaeserve.client.pictures",
    "read_images": "vaeserve.client.images",
}
__all__ = ["AsyncVaeClient", "VaeClient", "__version__", "read_images", "write_grid"]
assert set(__all__) == {"__version__", *_LAZY}

if TYPE_CHECKING:
    from vaeserve.client.api import AsyncVaeClient, VaeClient
    from vaeserve.client.images import read_images
    from vaeserve.client.pictures import write_grid


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'vaeserve' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
