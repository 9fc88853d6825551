"""One ONNX graph that stops at the exit: the exported segment graphs nested in ``If`` nodes.

:mod:`sdn.export_onnx` writes one graph per segment, and a Python loop can run them one after the other, testing
each internal classifier's answer in numpy. On a small network on the CPU that loop's fixed costs (a session call
per segment, the numpy softmax and test, the copies in and out of ONNX Runtime) are a large share of an image that
leaves early. This module composes the same segment graphs into one graph, run in one ONNX Runtime call per batch.

Every level k of it

1. runs segment k on the images still running (``x`` at level 0),
2. takes the float64 softmax of IC k's logits and decides which images exit, with the rule of the offline
   analysis (top probability >= threshold, or normalised entropy <= threshold),
3. runs level k + 1, in an ``If`` node, on the images that did not exit, if there are any.

The last level is the final head, whose answer every image that reaches it takes. There are two chains of levels:
for a batch of one image the next level simply runs on the features (or not); for a larger batch the
features of the images still running are gathered before the next level and its answers scattered back. The graph
picks the chain from the batch size.

Inputs: ``x`` float32 [B, C, H, W] and ``threshold`` float64 scalar (a request can change it without another
export). Output: ``answer`` int64 [B], ``exit index * num_classes + class index`` (:func:`decode`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sdn.analysis.early_exit import PER_EXIT_POLICIES as POLICIES

INPUT, THRESHOLD, OUTPUT = "x", "threshold", "answer"


def decode(answer: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(class index, exit index) int64 [B] from the graph's ``answer`` output."""
    answer = np.asarray(answer, dtype=np.int64)
    return answer % num_classes, answer // num_classes


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name=name))


def _branch(
    nodes: list[onnx.NodeProto], name: str, result: str, weights: Sequence[onnx.TensorProto] = ()
) -> onnx.GraphProto:
    """A branch of an ``If``: ``nodes`` (reading outer-scope values) and the ``weights`` they read, whose int64
    ``result`` it returns."""
    out = f"{name}_out"
    body = [*nodes, helper.make_node("Identity", [result], [out])]
    return helper.make_graph(
        body, name, [], [helper.make_tensor_value_info(out, TensorProto.INT64, None)], initializer=list(weights)
    )


class _Composer:
    """Builds the levels from the segment graphs. Each level's weights are initializers of the graph (or ``If``
    branch) that holds its nodes: ONNX Runtime moves a convolution to its blocked-layout (NCHWc) kernel only when
    its weights are initializers of the graph that holds it; with the weights in the top graph, read from the
    outer scope, every convolution stayed a plain FusedConv and the whole graph was slower than the CNN. The two
    chains therefore hold a copy of the weights each."""

    def __init__(
        self, segments: Sequence[onnx.GraphProto], final: onnx.GraphProto, policy: str, num_classes: int
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"the one-graph early exit supports policies {list(POLICIES)}, got {policy!r}")
        self.graphs = [*segments, final]
        self.policy = policy
        self.num_classes = num_classes

    @property
    def final_level(self) -> int:
        return len(self.graphs) - 1

    def inline(self, k: int, p: str, x: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], dict[str, str]]:
        """Graph ``k``'s nodes and weights with every name prefixed by ``p``, its input fed from ``x``; returns
        (nodes, weights, {output: new name})."""
        graph = self.graphs[k]
        weight_names = {init.name for init in graph.initializer}
        (graph_input,) = [i.name for i in graph.input if i.name not in weight_names]

        def rename(name: str) -> str:
            if not name:  # an optional input left out
                return name
            return x if name == graph_input else p + name

        weights = []
        for init in graph.initializer:
            copy = onnx.TensorProto()
            copy.CopyFrom(init)
            copy.name = rename(init.name)
            weights.append(copy)
        nodes = []
        for node in graph.node:
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                raise NotImplementedError(f"segment graph {k} has a control-flow node ({node.op_type})")
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.input[:] = [rename(n) for n in node.input]
            copy.output[:] = [rename(n) for n in node.output]
            copy.name = p + node.name
            nodes.append(copy)
        return nodes, weights, {o.name: rename(o.name) for o in graph.output}

    def decision(self, p: str, logits: str) -> tuple[list[onnx.NodeProto], str]:
        """Nodes that decide for each row of ``logits`` [n, K] whether it exits, as the offline analysis does on the
        float64 softmax (:func:`sdn.analysis.early_exit.simulate`); returns (nodes, fired bool [n])."""
        nodes = [
            _const(f"{p}last_axis", np.array([-1], dtype=np.int64)),
            helper.make_node("Cast", [logits], [f"{p}logits64"], to=TensorProto.DOUBLE),
            helper.make_node("Softmax", [f"{p}logits64"], [f"{p}probs"], axis=-1),
        ]
        if self.policy == "confidence":
            return nodes + [
                helper.make_node("ReduceMax", [f"{p}probs", f"{p}last_axis"], [f"{p}confidence"], keepdims=0),
                helper.make_node("GreaterOrEqual", [f"{p}confidence", THRESHOLD], [f"{p}fired"]),
            ], f"{p}fired"
        k = self.num_classes
        return nodes + [
            _const(f"{p}zero", np.array(0.0)),
            _const(f"{p}one", np.array(1.0)),
            _const(f"{p}minus_inv_log_k", np.array(-1.0 / math.log(k) if k > 1 else 0.0)),
            helper.make_node("Greater", [f"{p}probs", f"{p}zero"], [f"{p}positive"]),
            helper.make_node("Where", [f"{p}positive", f"{p}probs", f"{p}one"], [f"{p}safe"]),
            helper.make_node("Log", [f"{p}safe"], [f"{p}log"]),
            helper.make_node("Mul", [f"{p}probs", f"{p}log"], [f"{p}plogp"]),
            helper.make_node("ReduceSum", [f"{p}plogp", f"{p}last_axis"], [f"{p}neg_entropy"], keepdims=0),
            helper.make_node("Mul", [f"{p}neg_entropy", f"{p}minus_inv_log_k"], [f"{p}entropy_raw"]),
            helper.make_node("Clip", [f"{p}entropy_raw", f"{p}zero", f"{p}one"], [f"{p}entropy"]),
            helper.make_node("LessOrEqual", [f"{p}entropy", THRESHOLD], [f"{p}fired"]),
        ], f"{p}fired"

    def answer(self, p: str, logits: str, k: int) -> tuple[list[onnx.NodeProto], str]:
        """Each row's answer at exit ``k``: ``k * num_classes + argmax(logits)``. The argmax of the float32 logits
        is that of the float64 probabilities: exp and the division by one sum keep distinct values distinct."""
        return [
            helper.make_node("ArgMax", [logits], [f"{p}class"], axis=-1, keepdims=0),
            _const(f"{p}exit_offset", np.array(k * self.num_classes, dtype=np.int64)),
            helper.make_node("Add", [f"{p}class", f"{p}exit_offset"], [f"{p}answer"]),
        ], f"{p}answer"

    def level(self, k: int, x: str, chain: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
        """Level ``k`` of ``chain`` ("r": one row, "b": a batch) reading features ``x``; returns (nodes, the
        weights they read, answer). Deeper levels' weights are in the ``If`` branches that hold them."""
        p = f"{chain}{k}_"
        nodes, weights, outs = self.inline(k, p, x)
        answer_nodes, answer = self.answer(p, outs["logits"], k)
        if k == self.final_level:
            return nodes + answer_nodes, weights, answer
        decide, fired = self.decision(p, outs["logits"])
        nodes += decide
        if chain == "r":  # one image: it exits here (its answer computed only then), or the next level runs
            next_nodes, next_weights, next_answer = self.level(k + 1, outs["features"], chain)
            nodes.append(
                helper.make_node(
                    "If",
                    [fired],
                    [f"{p}out"],
                    then_branch=_branch(answer_nodes, f"{p}exits", answer),
                    else_branch=_branch(next_nodes, f"{p}goes_on", next_answer, next_weights),
                )
            )
            return nodes, weights, f"{p}out"
        nodes += answer_nodes
        nodes += [
            helper.make_node("Not", [fired], [f"{p}running"]),
            helper.make_node("NonZero", [f"{p}running"], [f"{p}running_2d"]),
            _const(f"{p}axis0", np.array([0], dtype=np.int64)),
            helper.make_node("Squeeze", [f"{p}running_2d", f"{p}axis0"], [f"{p}rows"]),
            helper.make_node("Size", [f"{p}rows"], [f"{p}num_running"]),
            _const(f"{p}no_rows", np.array(0, dtype=np.int64)),
            helper.make_node("Greater", [f"{p}num_running", f"{p}no_rows"], [f"{p}any_running"]),
        ]
        gather = helper.make_node("Gather", [outs["features"], f"{p}rows"], [f"{p}next_x"], axis=0)
        next_nodes, next_weights, next_answer = self.level(k + 1, f"{p}next_x", chain)
        scatter = helper.make_node("ScatterElements", [answer, f"{p}rows", next_answer], [f"{p}merged"], axis=0)
        nodes.append(
            helper.make_node(
                "If",
                [f"{p}any_running"],
                [f"{p}out"],
                then_branch=_branch([gather, *next_nodes, scatter], f"{p}goes_on", f"{p}merged", next_weights),
                else_branch=_branch([], f"{p}all_exit", answer),
            )
        )
        return nodes, weights, f"{p}out"


def build(
    segments: Sequence[onnx.ModelProto],
    final: onnx.ModelProto,
    *,
    policy: str,
    num_classes: int,
    input_shape: Sequence[int],
    opset: int,
) -> onnx.ModelProto:
    """The one-graph early exit over ``segments`` (input "x"; outputs "features", "logits") and ``final`` ("x" ->
    "logits"), checked with onnx's checker."""
    composer = _Composer([m.graph for m in segments], final.graph, policy, num_classes)
    one_nodes, one_weights, one_answer = composer.level(0, INPUT, "r")
    batch_nodes, batch_weights, batch_answer = composer.level(0, INPUT, "b")
    nodes = [
        helper.make_node("Shape", [INPUT], ["batch_size"], start=0, end=1),
        _const("one", np.array([1], dtype=np.int64)),
        helper.make_node("Equal", ["batch_size", "one"], ["one_image"]),
        helper.make_node(
            "If",
            ["one_image"],
            [OUTPUT],
            then_branch=_branch(one_nodes, "one_image_chain", one_answer, one_weights),
            else_branch=_branch(batch_nodes, "batch_chain", batch_answer, batch_weights),
        ),
    ]
    graph = helper.make_graph(
        nodes,
        f"sdn_early_exit_{policy}",
        [
            helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", *input_shape]),
            helper.make_tensor_value_info(THRESHOLD, TensorProto.DOUBLE, []),
        ],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.INT64, ["batch"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = segments[0].ir_version
    onnx.checker.check_model(model, full_check=False)
    return model
