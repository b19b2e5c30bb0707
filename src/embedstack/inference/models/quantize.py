"""int8 variants of an fp32 ONNX graph (ONNX Runtime dynamic quantization), per-layer choices.

Only MatMuls with a weight initializer are quantized (weights int8, per output channel by
default; activations u8 per tensor at run time). MatMuls of two activations (attention scores)
stay fp32, and `exclude` keeps any node whose name contains one of the given substrings in fp32
too, e.g. ("output/dense",) for the FFN down-projections, or ("layer.5/",) for the last layer.
Whether the result is good enough is not assumed here: the accuracy gate decides.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Int8Config:
    per_channel: bool = True
    reduce_range: bool = False
    exclude: tuple[str, ...] = ()

    @property
    def tag(self) -> str:
        """A file-name-safe id of the configuration (part of the cache key)."""
        parts = ["pc" if self.per_channel else "pt"]
        if self.reduce_range:
            parts.append("rr")
        parts += [e.replace("/", "_").replace(".", "").strip("_") for e in self.exclude]
        return "-".join(parts)


def weight_matmuls(model_path: Path) -> list[str]:
    """Names of the MatMul nodes whose second input is a weight (initializer)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    weights = {init.name for init in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def select_nodes(names: Sequence[str], exclude: Sequence[str]) -> list[str]:
    return [n for n in names if not any(part in n for part in exclude)]


def quantize_int8_dynamic(src: Path, dst: Path, config: Int8Config = Int8Config()) -> list[str]:
    """Write the int8 model to `dst`; returns the names of the quantized nodes."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = select_nodes(weight_matmuls(src), config.exclude)
    if not nodes:
        raise ValueError(f"int8 config {config} leaves no MatMul to quantize in {src}")
    quantize_dynamic(
        str(src),
        str(dst),
        op_types_to_quantize=["MatMul"],
        nodes_to_quantize=nodes,
        per_channel=config.per_channel,
        reduce_range=config.reduce_range,
        weight_type=QuantType.QInt8,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    log.info("quantized %d MatMuls of %s to int8 (%s)", len(nodes), src.name, config.tag)
    return nodes
