"""Layer 5: the Predictor, its backends (PyTorch, ONNX Runtime, OpenVINO), ONNX export, output formats, the explain job."""
