"""`vaeserve export`: PyTorch checkpoint -> versioned ONNX model repository; `repository` is the torch-free reader."""
