"""Inference engines: one module per engine (ONNX Runtime, OpenVINO, torch, sentence-transformers,
remote OpenAI-compatible, hashing) and the model tokenizer they share."""
