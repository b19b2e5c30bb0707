"""ONNX Runtime backends: the exported all-MiniLM-L6-v2 (fp32 or int8) and the packaged L3 graph."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedstack.inference.batching.packed import PackedEmbedder
from embedstack.inference.engines.hf_tokenizer import HFTokenizer
from embedstack.types import ModelSpec


@dataclass(frozen=True)
class OnnxOptions:
    """Session tuning. threads 0 = one per core. Spinning off leaves the cores to the tokenizer,
    the event loop and the index between runs (measured on 2 busy cores, fp32: off 44 texts/s,
    on 36). max_batch_tokens bounds the padded tokens of one session run; texts are sorted by
    length first, so padding stays small. Small runs keep activations in cache: measured on the
    same cores, fp32 L6, 256 real texts: 16384 tokens 21 texts/s, 4096 44, 1024 91, 384 137,
    256 137, 128 128; int8: 4096 138, 256 284. (torch wants the opposite: bf16 at 4096 tokens
    28 texts/s, at 256 only 5.)"""

    threads: int = 0
    spinning: bool = False
    max_batch_tokens: int = 384
    max_batch_size: int = 64


def session_options(opts: OnnxOptions) -> object:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = opts.threads or (os.cpu_count() or 1)
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if opts.spinning else "0")
    so.log_severity_level = 3
    return so


class OnnxForward:
    """One InferenceSession; `__call__` runs it on (ids, mask) and returns the pooled output."""

    def __init__(self, model_path: Path, output: str, opts: OnnxOptions = OnnxOptions()) -> None:
        import onnxruntime as ort

        self._session = ort.InferenceSession(
            str(model_path), session_options(opts), providers=["CPUExecutionProvider"]
        )
        names = {o.name for o in self._session.get_outputs()}
        if output not in names:
            raise ValueError(f"{model_path.name} has no output {output!r} (has {sorted(names)})")
        self._output = [output]
        self._inputs = [i.name for i in self._session.get_inputs()]

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        (out,) = self._session.run(self._output, feed)
        return np.asarray(out, dtype=np.float32)


def onnx_embedder(
    spec: ModelSpec,
    model_path: Path,
    tokenizer_json: Path,
    output: str,
    backend: str,
    opts: OnnxOptions = OnnxOptions(),
) -> PackedEmbedder:
    """An Embedder running `model_path` in ONNX Runtime; `spec` says what space it produces."""
    tokenizer = HFTokenizer(tokenizer_json, spec.max_tokens)
    return PackedEmbedder(
        spec,
        tokenizer,
        OnnxForward(model_path, output, opts),
        backend,
        max_batch_tokens=opts.max_batch_tokens,
        max_batch_size=opts.max_batch_size,
    )
