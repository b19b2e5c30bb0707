"""Per-token int8: each token's activation scale comes from that token alone (batch-invariant).

ONNX Runtime's dynamic quantization takes one activation scale per tensor, i.e. over the whole
batch, padding included, so a text's vector depends on its companions. Static quantization fixes
the scales from calibration text (invariant, but coarse for the tokens whose range is far from
the calibration maximum). Here each row (token) of a MatMul's input gets its own symmetric scale,
max|x_row| / 127, written as plain ONNX ops in front of MatMulInteger:

    s = ReduceMax(|x|, last axis) / 127                      (per token, fp32)
    q = Cast<uint8>(Round(x / s) + 128)                      (zero point 128: symmetric in u8)
    y = Cast<float>(MatMulInteger(q, W_int8, 128)) * s * w_scale   (w_scale per output channel)

The integer product is exact (int32 accumulation), and nothing in it looks at another row, so a
token's output is the same whatever else is in the batch, up to fp32 rounding in the other ops.
As in the other int8 variants, only MatMuls with a weight initializer are quantized (weights int8
per output channel) and `exclude` keeps nodes in fp32; the accuracy gate decides the rest.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from embedstack.inference.models.quantize import Int8Config, select_nodes, weight_matmuls

log = logging.getLogger(__name__)


def quantize_int8_per_token(src: Path, dst: Path, config: Int8Config = Int8Config()) -> list[str]:
    """Write the per-token int8 model to `dst`; returns the names of the quantized nodes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    chosen = set(select_nodes(weight_matmuls(src), config.exclude))
    if not chosen:
        raise ValueError(f"int8 config {config} leaves no MatMul to quantize in {src}")
    inits = {i.name: i for i in graph.initializer}
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    consts = [
        numpy_helper.from_array(np.array(127.0, dtype=np.float32), "tok8_127"),
        numpy_helper.from_array(np.array(128.0, dtype=np.float32), "tok8_128f"),
        numpy_helper.from_array(np.array(1e-12, dtype=np.float32), "tok8_eps"),
        numpy_helper.from_array(np.array(128, dtype=np.uint8), "tok8_zp"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "tok8_axes"),
    ]
    quantized: dict[str, tuple[str, str]] = {}  # activation -> (uint8 tensor, scale tensor)
    new_nodes: list[onnx.NodeProto] = []
    done = []
    for node in graph.node:
        if node.op_type != "MatMul" or node.name not in chosen:
            new_nodes.append(node)
            continue
        x, w_name = node.input[0], node.input[1]
        p = node.name.strip("/").replace("/", "_")
        if x not in quantized:
            q = f"{p}_xq"
            s = f"{p}_xs"
            if opset >= 18:
                reduce = helper.make_node(
                    "ReduceMax", [f"{p}_abs", "tok8_axes"], [f"{p}_amax"], keepdims=1
                )
            else:
                reduce = helper.make_node(
                    "ReduceMax", [f"{p}_abs"], [f"{p}_amax"], axes=[-1], keepdims=1
                )
            new_nodes += [
                helper.make_node("Abs", [x], [f"{p}_abs"]),
                reduce,
                helper.make_node("Max", [f"{p}_amax", "tok8_eps"], [f"{p}_amax_eps"]),
                helper.make_node("Div", [f"{p}_amax_eps", "tok8_127"], [s]),
                helper.make_node("Div", [x, s], [f"{p}_xdiv"]),
                helper.make_node("Round", [f"{p}_xdiv"], [f"{p}_xround"]),
                helper.make_node("Add", [f"{p}_xround", "tok8_128f"], [f"{p}_xshift"]),
                helper.make_node("Cast", [f"{p}_xshift"], [q], to=TensorProto.UINT8),
            ]
            quantized[x] = (q, s)
        q, s = quantized[x]
        w = numpy_helper.to_array(inits[w_name]).astype(np.float32)  # (K, N)
        w_scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127.0
        wq = np.clip(np.round(w / w_scale), -127, 127).astype(np.int8)
        consts += [
            numpy_helper.from_array(wq, f"{p}_wq"),
            numpy_helper.from_array(w_scale.astype(np.float32), f"{p}_ws"),
        ]
        out = node.output[0]
        new_nodes += [
            helper.make_node("MatMulInteger", [q, f"{p}_wq", "tok8_zp"], [f"{p}_i32"]),
            helper.make_node("Cast", [f"{p}_i32"], [f"{p}_f32"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{p}_f32", s], [f"{p}_rows"]),
            helper.make_node("Mul", [f"{p}_rows", f"{p}_ws"], [out], name=node.name),
        ]
        done.append(node.name)
    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep + [c for c in consts if c.name in used])
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    log.info("quantized %d MatMuls of %s to per-token int8 (%s)", len(done), src.name, config.tag)
    return done
