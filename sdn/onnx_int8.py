"""int8 weights for the ICs' linear layers of an exported segment graph (``sdn export --ic-weights int8``).

At batch 1 an IC's linear layer is a matrix-vector product whose weights are read once per image: on a CPU it is
bound by memory, not by the operations the cost model counts. With 100 classes MobileNet's ICs hold 3.5 million
weights (14 MB in float32, as many as its whole backbone), and passing an IC costs about 3.5x what it costs with 10
classes. This rewrite stores each IC's weight matrix as int8 (one symmetric scale per class) and quantizes the IC's
input to uint8 per image (one scale and zero point per row, so that an image's answer does not depend on the other
images of its batch), then multiplies in integers and rescales to float:

    s_x = (max(x_row, 0) - min(x_row, 0)) / 255,  z_x = round(-min(x_row, 0) / s_x)     per row
    q = QuantizeLinear(x, s_x, z_x)                                                      uint8
    y = float(MatMulInteger(q, W_q^T) - z_x * colsum(W_q)) * s_x * s_w + b

The zero point is taken out after the product (``colsum``: each class's sum of int8 weights), in int32, because
ONNX Runtime's fast integer kernel is uint8 x int8 with one zero point per tensor (int8 x int8 measured 30x slower
on an AVX-512 CPU). An approximation: on the CIFAR-100 MobileNet an IC's logits moved by a median of 0.04-0.08%
of each image's logit range (at most 1%), and the exits and predictions of a few images in a thousand differed from
the float32 model's (``docs/deploy-latency.md``); the float32 export remains the default and the exact one.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INT8_MAX = 127.0
UINT8_MAX = 255.0


def quantize_weight(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``weight`` (classes x features, float) as int8 with one symmetric scale per class (row): (W_q, s_w)."""
    amax = np.abs(weight).max(axis=1)
    scale = np.where(amax > 0, amax / INT8_MAX, 1.0).astype(np.float32)
    quantized = np.clip(np.rint(weight / scale[:, None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    return quantized, scale


def quantize_linear_node(model: onnx.ModelProto, weight_name: str) -> onnx.ModelProto:
    """``model`` with the ``Gemm`` that reads the initializer ``weight_name`` (as ``nn.Linear`` exports it:
    ``transB=1``, a bias) replaced by its int8 form; the float weight is removed. A clear error where no such
    ``Gemm`` is in the graph's top level."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    matches = [
        (i, node)
        for i, node in enumerate(graph.node)
        if node.op_type == "Gemm" and len(node.input) >= 2 and node.input[1] == weight_name
    ]
    if len(matches) != 1 or weight_name not in initializers:
        raise ValueError(
            f"graph {graph.name!r}: expected one Gemm reading the initializer {weight_name!r}, found {len(matches)}; "
            "only ICs that end in one linear layer can be exported with int8 weights (use --ic-weights float32)"
        )
    position, gemm = matches[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in gemm.attribute}
    if attrs.get("transA", 0) or not attrs.get("transB", 0) or attrs.get("alpha", 1.0) != 1.0:
        raise ValueError(f"graph {graph.name!r}: the Gemm of {weight_name!r} is not an nn.Linear's (transB=1)")
    weight = numpy_helper.to_array(initializers[weight_name]).astype(np.float32)
    quantized, weight_scale = quantize_weight(weight)
    x, y = gemm.input[0], gemm.output[0]
    p = f"{gemm.name or weight_name}_int8/"  # a unique prefix for the names added here
    has_bias = len(gemm.input) > 2 and bool(gemm.input[2])
    column_sums = quantized.sum(axis=1, dtype=np.int32)  # [classes]
    new_initializers = [
        numpy_helper.from_array(np.ascontiguousarray(quantized.T), p + "weight_q"),
        numpy_helper.from_array(weight_scale, p + "weight_scale"),
        numpy_helper.from_array(column_sums, p + "weight_colsum"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), p + "axis1"),
        numpy_helper.from_array(np.array(1.0 / UINT8_MAX, dtype=np.float32), p + "inv255"),
        numpy_helper.from_array(np.array(1e-30, dtype=np.float32), p + "floor"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), p + "zero"),
        numpy_helper.from_array(np.array(UINT8_MAX, dtype=np.float32), p + "top"),
    ]
    nodes = [
        helper.make_node("ReduceMin", [x, p + "axis1"], [p + "row_min"], keepdims=0),
        helper.make_node("ReduceMax", [x, p + "axis1"], [p + "row_max"], keepdims=0),
        helper.make_node("Min", [p + "row_min", p + "zero"], [p + "lo"]),  # the range holds 0, as in ONNX's
        helper.make_node("Max", [p + "row_max", p + "zero"], [p + "hi"]),  # DynamicQuantizeLinear
        helper.make_node("Sub", [p + "hi", p + "lo"], [p + "range"]),
        helper.make_node("Max", [p + "range", p + "floor"], [p + "range_pos"]),
        helper.make_node("Mul", [p + "range_pos", p + "inv255"], [p + "x_scale"]),  # [N]
        helper.make_node("Neg", [p + "lo"], [p + "neg_lo"]),
        helper.make_node("Div", [p + "neg_lo", p + "x_scale"], [p + "zero_f"]),
        helper.make_node("Round", [p + "zero_f"], [p + "zero_r"]),
        helper.make_node("Clip", [p + "zero_r", p + "zero", p + "top"], [p + "zero_c"]),
        helper.make_node("Cast", [p + "zero_c"], [p + "x_zero"], to=TensorProto.UINT8),  # [N]
        helper.make_node("QuantizeLinear", [x, p + "x_scale", p + "x_zero"], [p + "x_q"], axis=0),
        helper.make_node("MatMulInteger", [p + "x_q", p + "weight_q"], [p + "acc"]),  # int32 [N, classes]
        helper.make_node("Cast", [p + "x_zero"], [p + "x_zero_i"], to=TensorProto.INT32),
        helper.make_node("Unsqueeze", [p + "x_zero_i", p + "axis1"], [p + "x_zero_col"]),  # [N, 1]
        helper.make_node("Mul", [p + "x_zero_col", p + "weight_colsum"], [p + "offset"]),
        helper.make_node("Sub", [p + "acc", p + "offset"], [p + "acc_centred"]),
        helper.make_node("Cast", [p + "acc_centred"], [p + "acc_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", [p + "x_scale", p + "axis1"], [p + "x_scale_col"]),  # [N, 1]
        helper.make_node("Mul", [p + "acc_f", p + "x_scale_col"], [p + "rows"]),
        helper.make_node("Mul", [p + "rows", p + "weight_scale"], [p + "scaled" if has_bias else y]),
    ]
    if has_bias:
        beta = float(attrs.get("beta", 1.0))
        bias = gemm.input[2]
        if beta != 1.0:
            new_initializers.append(numpy_helper.from_array(np.array(beta, dtype=np.float32), p + "beta"))
            nodes.append(helper.make_node("Mul", [bias, p + "beta"], [p + "bias"]))
            bias = p + "bias"
        nodes.append(helper.make_node("Add", [p + "scaled", bias], [y]))
    for i, node in enumerate(nodes):  # unique names: graphs composed from segments prefix them
        node.name = f"{p}{i}_{node.op_type}"
    kept = [n for i, n in enumerate(graph.node) if i != position]
    del graph.node[:]
    graph.node.extend(kept[:position] + nodes + kept[position:])
    kept_init = [init for init in graph.initializer if init.name != weight_name]
    del graph.initializer[:]
    graph.initializer.extend(kept_init + new_initializers)
    onnx.checker.check_model(model)
    return model
