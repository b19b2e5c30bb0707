"""The backends of each bundled model: how to build every model x engine x precision.

A sentence-transformers BERT folder ("bert-folder", all-MiniLM-L6-v2): sentence-transformers
(the fp32 reference), ONNX Runtime fp32 (exported once, cached by fingerprint), ONNX int8
(dynamic, per channel), ONNX int8 after SmoothQuant rescaling (FFN down-projections kept fp32),
OpenVINO fp32 and bf16 over the same export, torch fp32, torch bf16 (autocast or bf16 weights,
where the CPU has AVX-512 BF16 / AMX), torch CUDA fp16/bf16/fp32 (where there is a GPU).
A packaged ONNX graph ("onnx-graph", paraphrase-MiniLM-L3-v2): the graph in fp32 (the
reference), int8, OpenVINO.
Whether a backend may serve is not decided here: the catalog gates each one against fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedstack.inference.backend import Embedder
from embedstack.inference.batching.packed import PackedEmbedder
from embedstack.inference.batching.tokens import TokenPacker
from embedstack.inference.engines.onnx import OnnxOptions, onnx_embedder
from embedstack.inference.engines.openvino import (
    OvOptions,
    OvPrecision,
    cpu_has_ov_bf16,
    openvino_available,
    openvino_embedder,
)
from embedstack.inference.engines.torch import (
    TorchMode,
    cpu_has_bf16,
    cuda_available,
    torch_embedder,
)
from embedstack.inference.models.bundled import L6, BundledModel, bundled_spec, with_precision
from embedstack.inference.models.export import cached_file, export_bert_mean_pool, exported_model
from embedstack.inference.models.quantize import Int8Config, quantize_int8_dynamic
from embedstack.inference.models.smooth import (
    ALPHA,
    calibration_tag,
    input_ranges,
    load_calibration,
    smooth,
)
from embedstack.inference.models.static_int8 import quantize_int8_static
from embedstack.inference.models.token_int8 import quantize_int8_per_token
from embedstack.types import ModelSpec

ST_BACKEND = "sentence-transformers"


def smooth_int8(layers: int) -> Int8Config:
    """int8 for a SmoothQuant-rescaled BERT: the FFN down-projections (input: GELU output,
    heavy-tailed) stay fp32."""
    return Int8Config(exclude=tuple(f"layer.{i}/output/dense" for i in range(layers)))


def sentence_transformer(model: BundledModel = L6, device: str = "cpu") -> Embedder:
    """A bundled model folder on sentence-transformers: the fp32 reference, run as users run it."""
    from embedstack.inference.engines.sentence_transformers import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(bundled_spec(model), model.folder(), device)


@dataclass(frozen=True)
class Variant:
    """One model on one backend."""

    model: str
    backend: str
    precision: str
    build: Callable[[], Embedder]
    auto: bool = True  # a candidate for the auto-selected backend
    reference: bool = False  # the fp32 engine the others are gated against
    tag: str = ""  # what else makes this build distinct (e.g. its calibration data)

    @property
    def name(self) -> str:
        return f"{self.model}@{self.backend}"


class BundledVariants:
    """Variant lists for the bundled models; builders run only when a variant is loaded."""

    def __init__(
        self,
        cache_dir: Path,
        onnx: OnnxOptions,
        int8: Int8Config,
        ov: OvOptions,
        spec: Callable[[str], ModelSpec],
        calibration: Callable[[], Sequence[str]] = load_calibration,
    ) -> None:
        self.cache_dir = cache_dir
        self._onnx = onnx
        self._int8 = int8
        self._ov = ov
        self.spec = spec
        self._calibration = calibration

    def of(self, model: BundledModel) -> list[Variant]:
        if model.export == "bert-folder":
            return self._bert_folder(model)
        return self._onnx_graph(model)

    def _bert_folder(self, model: BundledModel) -> list[Variant]:
        m = model.name
        out = [
            Variant(m, ST_BACKEND, "float32", lambda: sentence_transformer(model), reference=True),
            Variant(m, "onnx-fp32", "float32", lambda: self._exported_onnx(model, "fp32")),
            Variant(m, "onnx-int8", "int8-dynamic", lambda: self._exported_onnx(model, "int8")),
            Variant(
                m,
                "onnx-int8-smooth",
                "int8-smooth",
                lambda: self._smooth_int8(model),
                tag=f"cal-{calibration_tag(self._calibration())}",
            ),
            # batch-invariant int8 (models/token_int8.py): per-token activation scales
            Variant(
                m,
                "onnx-int8-token",
                "int8-token",
                lambda: self._smooth_int8(model, "token"),
                tag=f"cal-{calibration_tag(self._calibration())}",
            ),
            # static scales from the calibration text (models/static_int8.py): invariant, but
            # refused here for accuracy (cosine mean 0.998), so not an auto candidate
            Variant(
                m,
                "onnx-int8-static",
                "int8-static",
                lambda: self._smooth_int8(model, "static"),
                auto=False,
                tag=f"cal-{calibration_tag(self._calibration())}",
            ),
            Variant(m, "torch-fp32", "float32", self._torch_builder(model, "fp32"), auto=False),
        ]
        out += self._openvino(model, lambda: self._export(model))
        cpu_modes: tuple[TorchMode, ...] = ("bf16-autocast", "bf16") if cpu_has_bf16() else ()
        for mode in cpu_modes:
            out.append(Variant(m, f"torch-{mode}", mode, self._torch_builder(model, mode)))
        gpu_modes: tuple[TorchMode, ...] = ("fp16", "bf16", "fp32") if cuda_available() else ()
        for mode in gpu_modes:
            prec = "float32" if mode == "fp32" else mode
            build = self._torch_builder(model, mode, "cuda")
            out.append(Variant(m, f"cuda-{mode}", prec, build))
        return out

    def _onnx_graph(self, model: BundledModel) -> list[Variant]:
        m = model.name
        tok = model.tokenizer_json()

        def fp32() -> Embedder:
            spec = self.spec(m)
            path = model.weights_path()
            return onnx_embedder(spec, path, tok, model.output, "onnx-fp32", self._onnx)

        def int8() -> Embedder:
            spec = self.spec(m)
            path = self._int8_file(model.weights_path(), spec.fingerprint)
            s = with_precision(spec, "int8-dynamic")
            return onnx_embedder(s, path, tok, model.output, "onnx-int8", self._onnx)

        return [
            Variant(m, "onnx-fp32", "float32", fp32, reference=True),
            Variant(m, "onnx-int8", "int8-dynamic", int8),
            *self._openvino(model, model.weights_path),
        ]

    def _torch_builder(
        self, model: BundledModel, mode: TorchMode, device: str = "cpu"
    ) -> Callable[[], Embedder]:
        def build() -> Embedder:
            prec = "float32" if mode == "fp32" else mode
            backend = f"{'cuda' if device.startswith('cuda') else 'torch'}-{mode}"
            s = with_precision(self.spec(model.name), prec)
            return torch_embedder(s, model.folder(), backend, mode, device)

        return build

    def _openvino(self, model: BundledModel, graph: Callable[[], Path]) -> list[Variant]:
        """OpenVINO fp32 and (where the CPU multiplies bf16) bf16 over the model's ONNX graph."""
        if not openvino_available():
            return []

        def build(precision: OvPrecision) -> Callable[[], Embedder]:
            def make() -> Embedder:
                prec = "float32" if precision == "f32" else precision
                return openvino_embedder(
                    with_precision(self.spec(model.name), prec),
                    graph(),
                    model.tokenizer_json(),
                    model.output,
                    precision,
                    f"openvino-{precision.replace('f32', 'fp32')}",
                    self._ov,
                )

            return make

        out = [Variant(model.name, "openvino-fp32", "float32", build("f32"))]
        if cpu_has_ov_bf16():
            out.append(Variant(model.name, "openvino-bf16", "bf16", build("bf16")))
        return out

    def _export(self, model: BundledModel) -> Path:
        spec = self.spec(model.name)
        return exported_model(model.folder(), spec.fingerprint, self.cache_dir)

    def _exported_onnx(self, model: BundledModel, kind: str) -> PackedEmbedder:
        spec = self.spec(model.name)
        fp32 = self._export(model)
        tok = model.tokenizer_json()
        if kind == "fp32":
            return onnx_embedder(spec, fp32, tok, model.output, "onnx-fp32", self._onnx)
        path = self._int8_file(fp32, spec.fingerprint)
        s = with_precision(spec, "int8-dynamic")
        return onnx_embedder(s, path, tok, model.output, "onnx-int8", self._onnx)

    def _smooth_int8(self, model: BundledModel, scales: str = "dynamic") -> Embedder:
        """SmoothQuant-rescaled export (alpha 0.8, ranges from the shipped calibration text),
        int8 except the FFN down-projections (a per-layer choice: their inputs, GELU outputs,
        are the heavy-tailed ones). Activation `scales`: "dynamic" (one per batch tensor: a
        text's vector depends on its companions), "token" (one per token) or "static" (from the
        calibration text)."""
        spec = self.spec(model.name)
        tok = model.tokenizer_json()
        texts = list(self._calibration())

        def rescale(bert: Any) -> None:
            smooth(bert, input_ranges(bert, TokenPacker(str(tok), spec.max_tokens), texts))

        def export(tmp: Path) -> None:
            export_bert_mean_pool(model.folder(), tmp, rescale)

        name = f"model-smooth-a{ALPHA}-{calibration_tag(texts)}.onnx"
        smoothed = cached_file(self.cache_dir, spec.fingerprint, name, export)
        config = smooth_int8(model.layers)
        if scales == "token":
            path = self._derived(smoothed, spec.fingerprint, "int8-token", config,
                                 quantize_int8_per_token)  # fmt: skip
            s = with_precision(spec, "int8-token")
            return onnx_embedder(s, path, tok, model.output, "onnx-int8-token", self._onnx)
        if scales == "static":
            packer = TokenPacker(str(tok), spec.max_tokens)

            def static(src: Path, dst: Path, cfg: Int8Config) -> object:
                return quantize_int8_static(src, dst, packer, texts, cfg)

            path = self._derived(smoothed, spec.fingerprint, "int8-static", config, static)
            s = with_precision(spec, "int8-static")
            return onnx_embedder(s, path, tok, model.output, "onnx-int8-static", self._onnx)
        path = self._int8_file(smoothed, spec.fingerprint, config)
        s = with_precision(spec, "int8-smooth")
        return onnx_embedder(s, path, tok, model.output, "onnx-int8-smooth", self._onnx)

    def _derived(
        self,
        src: Path,
        fingerprint: str,
        kind: str,
        config: Int8Config,
        make: Callable[[Path, Path, Int8Config], object],
    ) -> Path:
        """`make(src, tmp, config)`, cached beside `src` (named by kind and config)."""
        name = f"{src.stem}-{kind}-{config.tag}.onnx"

        def build(tmp: Path) -> None:
            make(src, tmp, config)

        return cached_file(self.cache_dir, fingerprint, name, build)

    def _int8_file(self, fp32: Path, fingerprint: str, config: Int8Config | None = None) -> Path:
        config = config or self._int8
        name = f"{fp32.stem.replace('-fp32', '')}-int8-{config.tag}.onnx"

        def build(tmp: Path) -> None:
            quantize_int8_dynamic(fp32, tmp, config)

        return cached_file(self.cache_dir, fingerprint, name, build)
