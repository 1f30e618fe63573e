"""edgeattn.export: ONNX, TensorRT, OpenVINO and Core ML writers, lint rules and the parity gate."""
