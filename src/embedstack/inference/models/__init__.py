"""Models: the catalog (every model x engine, gated), the bundled models as data, their
variants, the accuracy gate, ONNX export and int8 quantization, calibration data."""
