"""The backends of each bundled model: how to build every model x engine x precision.

all-MiniLM-L6-v2: sentence-transformers (the fp32 reference), ONNX Runtime fp32 (exported once,
cached by fingerprint), ONNX int8 (dynamic, per channel), ONNX int8 after SmoothQuant rescaling
(FFN down-projections kept fp32; dynamic, per-token or static activation scales), OpenVINO fp32
and bf16 over the same export, torch fp32,
torch bf16 (autocast or bf16 weights, where the CPU has AVX-512 BF16 / AMX), torch CUDA
fp16/bf16/fp32 (where there is a GPU).
paraphrase-MiniLM-L3-v2: its packaged ONNX graph in fp32 (the reference), int8, OpenVINO.
Whether a backend may serve is not decided here: the catalog gates each one against fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedstack.inference import bundled
from embedstack.inference.backend import Embedder
from embedstack.inference.onnx import OnnxOptions, onnx_embedder
from embedstack.inference.onnx_export import cached_file, export_bert_mean_pool, exported_model
from embedstack.inference.ov_backend import (
    OvOptions,
    OvPrecision,
    cpu_has_ov_bf16,
    openvino_available,
    openvino_embedder,
)
from embedstack.inference.packed import PackedEmbedder
from embedstack.inference.quantize import Int8Config, quantize_int8_dynamic
from embedstack.inference.smooth import (
    ALPHA,
    calibration_tag,
    input_ranges,
    load_calibration,
    smooth,
)
from embedstack.inference.static_int8 import quantize_int8_static
from embedstack.inference.token_int8 import quantize_int8_per_token
from embedstack.inference.tokens import TokenPacker
from embedstack.inference.torch_backend import (
    TorchMode,
    cpu_has_bf16,
    cuda_available,
    torch_embedder,
)
from embedstack.types import ModelSpec

ST_BACKEND = "sentence-transformers"
# the FFN down-projections (input: GELU output, heavy-tailed) stay fp32 in the smoothed int8 model
SMOOTH_INT8 = Int8Config(exclude=tuple(f"layer.{i}/output/dense" for i in range(6)))


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

    def l6(self) -> list[Variant]:
        from embedstack.inference.sentence_transformers import load_bundled_l6

        m = bundled.L6_NAME
        out = [
            Variant(m, ST_BACKEND, "float32", load_bundled_l6, reference=True),
            Variant(m, "onnx-fp32", "float32", lambda: self._l6_onnx("fp32")),
            Variant(m, "onnx-int8", "int8-dynamic", lambda: self._l6_onnx("int8")),
            Variant(
                m,
                "onnx-int8-smooth",
                "int8-smooth",
                self._l6_smooth_int8,
                tag=f"cal-{calibration_tag(self._calibration())}",
            ),
            # batch-invariant int8 (inference/token_int8.py): per-token activation scales
            Variant(
                m,
                "onnx-int8-token",
                "int8-token",
                lambda: self._l6_smooth_int8("token"),
                tag=f"cal-{calibration_tag(self._calibration())}",
            ),
            # static scales from the calibration text (inference/static_int8.py): invariant, but
            # refused here for accuracy (cosine mean 0.998), so not an auto candidate
            Variant(
                m,
                "onnx-int8-static",
                "int8-static",
                lambda: self._l6_smooth_int8("static"),
                auto=False,
                tag=f"cal-{calibration_tag(self._calibration())}",
            ),
            Variant(m, "torch-fp32", "float32", lambda: self._l6_torch("fp32"), auto=False),
        ]
        out += self._openvino(m, lambda: self._l6_export(), "embedding")
        cpu_modes: tuple[TorchMode, ...] = ("bf16-autocast", "bf16") if cpu_has_bf16() else ()
        for mode in cpu_modes:
            out.append(Variant(m, f"torch-{mode}", mode, self._torch_builder(mode)))
        gpu_modes: tuple[TorchMode, ...] = ("fp16", "bf16", "fp32") if cuda_available() else ()
        for mode in gpu_modes:
            prec = "float32" if mode == "fp32" else mode
            out.append(Variant(m, f"cuda-{mode}", prec, self._torch_builder(mode, "cuda")))
        return out

    def _torch_builder(self, mode: TorchMode, device: str = "cpu") -> Callable[[], Embedder]:
        return lambda: self._l6_torch(mode, device)

    def _l6_torch(self, mode: TorchMode, device: str = "cpu") -> PackedEmbedder:
        spec = self.spec(bundled.L6_NAME)
        prec = "float32" if mode == "fp32" else mode
        backend = f"{'cuda' if device.startswith('cuda') else 'torch'}-{mode}"
        s = bundled.with_precision(spec, prec)
        return torch_embedder(s, bundled.l6_dir(), backend, mode, device)

    def _openvino(self, model: str, graph: Callable[[], Path], output: str) -> list[Variant]:
        """OpenVINO fp32 and (where the CPU multiplies bf16) bf16 over the model's ONNX graph."""
        if not openvino_available():
            return []

        def build(precision: OvPrecision) -> Callable[[], Embedder]:
            def make() -> Embedder:
                spec = self.spec(model)
                prec = "float32" if precision == "f32" else precision
                return openvino_embedder(
                    bundled.with_precision(spec, prec),
                    graph(),
                    bundled.l6_tokenizer_json(),
                    output,
                    precision,
                    f"openvino-{precision.replace('f32', 'fp32')}",
                    self._ov,
                )

            return make

        out = [Variant(model, "openvino-fp32", "float32", build("f32"))]
        if cpu_has_ov_bf16():
            out.append(Variant(model, "openvino-bf16", "bf16", build("bf16")))
        return out

    def _l6_export(self) -> Path:
        spec = self.spec(bundled.L6_NAME)
        return exported_model(bundled.l6_dir(), spec.fingerprint, self.cache_dir)

    def _l6_onnx(self, kind: str) -> PackedEmbedder:
        spec = self.spec(bundled.L6_NAME)
        fp32 = self._l6_export()
        tok = bundled.l6_tokenizer_json()
        if kind == "fp32":
            return onnx_embedder(spec, fp32, tok, "embedding", "onnx-fp32", self._onnx)
        path = self._int8_file(fp32, spec.fingerprint)
        s = bundled.with_precision(spec, "int8-dynamic")
        return onnx_embedder(s, path, tok, "embedding", "onnx-int8", self._onnx)

    def _l6_smooth_int8(self, scales: str = "dynamic") -> Embedder:
        """SmoothQuant-rescaled export (alpha 0.8, ranges from the shipped calibration text),
        int8 except the FFN down-projections (a per-layer choice: their inputs, GELU outputs,
        are the heavy-tailed ones). Activation `scales`: "dynamic" (one per batch tensor: a
        text's vector depends on its companions), "token" (one per token) or "static" (from the
        calibration text)."""
        spec = self.spec(bundled.L6_NAME)
        tok = bundled.l6_tokenizer_json()
        texts = list(self._calibration())

        def rescale(bert: Any) -> None:
            smooth(bert, input_ranges(bert, TokenPacker(str(tok), spec.max_tokens), texts))

        def export(tmp: Path) -> None:
            export_bert_mean_pool(bundled.l6_dir(), tmp, rescale)

        name = f"model-smooth-a{ALPHA}-{calibration_tag(texts)}.onnx"
        smoothed = cached_file(self.cache_dir, spec.fingerprint, name, export)
        if scales == "token":
            path = self._derived(smoothed, spec.fingerprint, "int8-token", quantize_int8_per_token)
            s = bundled.with_precision(spec, "int8-token")
            return onnx_embedder(s, path, tok, "embedding", "onnx-int8-token", self._onnx)
        if scales == "static":
            packer = TokenPacker(str(tok), spec.max_tokens)

            def static(src: Path, dst: Path, config: Int8Config) -> object:
                return quantize_int8_static(src, dst, packer, texts, config)

            path = self._derived(smoothed, spec.fingerprint, "int8-static", static)
            s = bundled.with_precision(spec, "int8-static")
            return onnx_embedder(s, path, tok, "embedding", "onnx-int8-static", self._onnx)
        path = self._int8_file(smoothed, spec.fingerprint, SMOOTH_INT8)
        s = bundled.with_precision(spec, "int8-smooth")
        return onnx_embedder(s, path, tok, "embedding", "onnx-int8-smooth", self._onnx)

    def _derived(
        self,
        src: Path,
        fingerprint: str,
        kind: str,
        make: Callable[[Path, Path, Int8Config], object],
        config: Int8Config = SMOOTH_INT8,
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

    def l3(self) -> list[Variant]:
        m = bundled.L3_NAME
        tok = bundled.l6_tokenizer_json()

        def fp32() -> Embedder:
            spec = self.spec(m)
            path = bundled.l3_onnx_file()
            return onnx_embedder(spec, path, tok, bundled.L3_OUTPUT, "onnx-fp32", self._onnx)

        def int8() -> Embedder:
            spec = self.spec(m)
            path = self._int8_file(bundled.l3_onnx_file(), spec.fingerprint)
            s = bundled.with_precision(spec, "int8-dynamic")
            return onnx_embedder(s, path, tok, bundled.L3_OUTPUT, "onnx-int8", self._onnx)

        return [
            Variant(m, "onnx-fp32", "float32", fp32, reference=True),
            Variant(m, "onnx-int8", "int8-dynamic", int8),
            *self._openvino(m, bundled.l3_onnx_file, bundled.L3_OUTPUT),
        ]
