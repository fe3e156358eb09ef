"""The gRPC inference server (vae.v1.VaeService) and its client.

serve.py (start-up, health, drain) -> servicer.py (the RPCs) -> validation.py, noise.py, batcher.py ->
runtime.py (onnxruntime sessions); errors.py maps request errors to gRPC statuses; metrics.py, logs.py and
tracing.py observe; client.py and cli.py are the user's side. Nothing here imports torch.
"""
