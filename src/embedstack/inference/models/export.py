"""Export a sentence-transformers BERT folder to ONNX once, cached by the weights' fingerprint.

The exported graph takes `input_ids` and `attention_mask` (int64, dynamic batch and length) and
returns `embedding`: the mean-pooled last hidden state (padding excluded), not normalized; the
embedder normalizes. Files land in `<cache_dir>/onnx/<fingerprint>/`; a file is written under a
temporary name and renamed into place, so a crash or a concurrent export never leaves a torn file.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from embedstack.fsutil import atomic_build

log = logging.getLogger(__name__)

EXPORT_OUTPUT = "embedding"
OPSET = 17


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "embedstack"


def cached_file(
    cache_dir: Path, fingerprint: str, name: str, build: Callable[[Path], None]
) -> Path:
    """`<cache_dir>/onnx/<fingerprint>/<name>`, built by `build(tmp_path)` if missing."""
    folder = cache_dir / "onnx" / fingerprint
    target = folder / name
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    atomic_build(target, build)
    return target


def export_bert_mean_pool(
    model_dir: Path, out: Path, transform: Callable[[Any], None] | None = None
) -> None:
    """torch.onnx.export of the transformer + masked mean pooling (eager attention, opset 17).

    `transform` may rewrite the loaded BertModel first (e.g. SmoothQuant rescaling)."""
    import torch
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(
        str(model_dir), attn_implementation="eager", local_files_only=True
    ).eval()
    if transform is not None:
        transform(bert)

    class _MeanPooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask)[0]
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * weights).sum(dim=1)
            return summed / weights.sum(dim=1).clamp(min=1e-9)

    ids = torch.ones((2, 16), dtype=torch.long)
    mask = torch.ones((2, 16), dtype=torch.long)
    mask[1, 9:] = 0
    dyn = {0: "batch", 1: "tokens"}
    log.info("exporting %s to ONNX", model_dir)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer chatter about shape-dependent Python branches
        torch.onnx.export(
            _MeanPooled(),
            (ids, mask),
            str(out),
            input_names=["input_ids", "attention_mask"],
            output_names=[EXPORT_OUTPUT],
            dynamic_axes={"input_ids": dyn, "attention_mask": dyn, EXPORT_OUTPUT: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )


def exported_model(model_dir: Path, fingerprint: str, cache_dir: Path | None = None) -> Path:
    """The fp32 ONNX export of `model_dir`, from the cache or exported now."""
    root = default_cache_dir() if cache_dir is None else cache_dir
    return cached_file(
        root, fingerprint, "model-fp32.onnx", lambda tmp: export_bert_mean_pool(model_dir, tmp)
    )
