"""Static int8: activation scales fixed from calibration text, so a text's vector does not depend
on its batch companions (ONNX Runtime static quantization, QDQ format, per-channel weights).

Dynamic int8 computes each activation scale at run time over the whole batch tensor (padding
included), so a text's vector moves with what it was batched with. Here the scales come from
the shipped calibration paragraphs (`inference/data/calibration.jsonl`, parts of the Python docs
the gate sample does not draw from), each run alone so padding never enters a range. At run time
every row is quantized with the same constants and multiplied in int8 with int32 accumulation
(exact), so rows are independent of each other up to fp32 rounding in the ops between matmuls.
ONNX Runtime fuses each DequantizeLinear pair + MatMul into MatMulIntegerToFloat. As in the
dynamic variant, only MatMuls with a weight initializer are quantized and `exclude` keeps nodes
in fp32; the accuracy gate, not this module, decides whether the result may serve.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedstack.inference.batching.tokens import TokenPacker
from embedstack.inference.models.quantize import Int8Config, select_nodes, weight_matmuls

log = logging.getLogger(__name__)


def calibration_feeds(packer: TokenPacker, texts: Sequence[str]) -> Iterator[dict[str, Any]]:
    """One feed per calibration text, unpadded (input_ids, attention_mask as (1, L) int64)."""
    packed = packer.encode(texts)
    for i in range(packed.size):
        ids, mask = packed.pad(np.array([i]), packer.pad_id)
        yield {"input_ids": ids, "attention_mask": mask}


def quantize_int8_static(
    src: Path,
    dst: Path,
    packer: TokenPacker,
    texts: Sequence[str],
    config: Int8Config = Int8Config(),
) -> list[str]:
    """Write the statically quantized model to `dst`; returns the names of the quantized nodes."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    nodes = select_nodes(weight_matmuls(src), config.exclude)
    if not nodes:
        raise ValueError(f"int8 config {config} leaves no MatMul to quantize in {src}")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = calibration_feeds(packer, texts)

        def get_next(self) -> dict[str, Any] | None:
            return next(self._feeds, None)

    # MinMax: ONNX Runtime's histogram calibrators (percentile, entropy) stack the collected
    # activations and so need one padded shape for all texts, which lets padding into the ranges
    extra: dict[str, Any] = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        nodes_to_quantize=nodes,
        per_channel=config.per_channel,
        reduce_range=config.reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options=extra,
    )
    log.info("statically quantized %d MatMuls of %s to int8 (%s)", len(nodes), src.name, config.tag)
    return nodes
