"""Export trained models to ONNX, check parity, render Triton configs and build the model repository."""
