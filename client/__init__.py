"""The client side of vaeserve: what runs on the caller's machine, never in the server.

api.py (VaeClient, AsyncVaeClient: numpy in, numpy out, over gRPC), images.py (image files to the model's input),
pictures.py (grids of images as PNG), cli.py (the client commands) and explore/ (the latent explorer page). It
needs grpc, numpy and Pillow, never onnxruntime or torch. `from vaeserve import VaeClient` is the stable path.
"""
