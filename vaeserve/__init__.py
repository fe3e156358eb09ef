"""vaeserve: train a VAE, export it to ONNX, serve it over gRPC."""

__version__ = "0.1.0"
