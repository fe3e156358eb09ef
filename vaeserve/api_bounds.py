"""Bounds the vae.v1 API documents (protos/vae/v1/vae.proto) that do not depend on the model or the server's
flags: the server enforces them (server/validation.py) and clients check them before sending (the explorer).
Bounds that do depend on them (rows, K, steps) travel in GetModelInfo."""

from __future__ import annotations

# SampleRequest.temperature: z ~ N(0, T^2 I). Beyond this the samples are noise, and far beyond it the decoder's
# arithmetic overflows.
MAX_TEMPERATURE = 10.0
