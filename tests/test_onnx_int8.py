"""int8 IC weights in the ONNX export: the rewrite computes what it defines, per image, within its error bound."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from sdn.export_onnx import session_options  # noqa: E402
from sdn.onnx_int8 import INT8_MAX, UINT8_MAX, quantize_linear_node, quantize_weight  # noqa: E402


def test_quantize_weight_keeps_each_class_within_half_a_step() -> None:
    weight = np.random.default_rng(0).standard_normal((5, 40)).astype(np.float32)
    weight[2] = 0.0  # a class whose weights are all zero: scale 1, no division by zero
    quantized, scale = quantize_weight(weight)
    assert quantized.dtype == np.int8 and scale.shape == (5,)
    assert np.abs(quantized.astype(int)).max() <= INT8_MAX
    assert scale[2] == 1.0 and not quantized[2].any()
    err = np.abs(quantized * scale[:, None] - weight)
    assert (err <= scale[:, None] / 2 + 1e-7).all()


class _Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(48, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def _int8_session(tmp_path: Path) -> tuple[ort.InferenceSession, nn.Linear]:
    torch.manual_seed(0)
    head = _Head().eval()
    path = tmp_path / "head.onnx"
    torch.onnx.export(
        head, (torch.zeros(2, 48),), str(path), input_names=["x"], output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=18, dynamo=False,
    )  # fmt: skip
    model = quantize_linear_node(onnx.load(str(path)), "linear.weight")
    assert {n.op_type for n in model.graph.node} >= {"MatMulInteger", "QuantizeLinear"}
    weight_q = next(init for init in model.graph.initializer if init.name.endswith("weight_q"))
    assert weight_q.data_type == onnx.TensorProto.INT8  # uint8 x int8: ONNX Runtime's fast integer kernel
    assert "Gemm" not in {n.op_type for n in model.graph.node}
    assert "linear.weight" not in {init.name for init in model.graph.initializer}  # the float copy is gone
    options = session_options(1)  # the process-wide pool where another test created it
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, head.linear


def test_int8_linear_computes_its_definition_per_row(tmp_path: Path) -> None:
    session, linear = _int8_session(tmp_path)
    x = np.random.default_rng(1).standard_normal((6, 48)).astype(np.float32)
    x[3] = 0.0  # an all-zero row: its scale is floored, its logits are the bias
    x[4] *= 1000.0  # a row of another magnitude does not change the others' answers (a scale per row)
    x[5] = np.abs(x[5])  # a row without negative values (post-ReLU features): its zero point is 0
    got = session.run(None, {"x": x})[0]
    weight = linear.weight.detach().numpy()
    bias = linear.bias.detach().numpy()
    w_q, w_scale = quantize_weight(weight)
    lo, hi = np.minimum(x.min(axis=1), 0), np.maximum(x.max(axis=1), 0)
    x_scale = np.maximum(hi - lo, np.float32(1e-30)) * np.float32(1 / UINT8_MAX)
    x_zero = np.clip(np.rint(-lo / x_scale), 0, 255)
    x_q = np.clip(np.rint(x / x_scale[:, None]) + x_zero[:, None], 0, 255).astype(np.int32)
    centred = x_q @ w_q.T.astype(np.int32) - x_zero.astype(np.int32)[:, None] * w_q.astype(np.int32).sum(axis=1)
    expected = centred.astype(np.float32) * x_scale[:, None] * w_scale + bias
    # another CPU's kernels may round x / s_x to the other side of a half step for an element: up to two steps apart
    steps = 2 * INT8_MAX * x_scale[:, None] * w_scale + 1e-6
    assert (np.abs(got - expected) <= steps).all()
    np.testing.assert_allclose(got[3], bias, rtol=0, atol=1e-6)
    for i in range(len(x)):  # one image's answer does not depend on its batch (a scale per tensor would move it
        alone = session.run(None, {"x": x[i : i + 1]})[0][0]  # by far more: row 4 is 1000x the others)
        assert (np.abs(alone - got[i]) <= steps[i]).all()
    exact = x @ weight.T + bias  # the float layer, within the quantization's bound
    bound = (
        0.5 * x_scale[:, None] * np.abs(weight).sum(axis=1)
        + 0.5 * w_scale * np.abs(x).sum(axis=1)[:, None]
        + 0.25 * x.shape[1] * x_scale[:, None] * w_scale
    )
    assert (np.abs(got - exact) <= bound * 1.001 + 1e-5).all()


def test_a_graph_without_that_linear_layer_is_refused_by_name(tmp_path: Path) -> None:
    session_path = tmp_path / "head.onnx"
    torch.onnx.export(_Head().eval(), (torch.zeros(2, 48),), str(session_path), opset_version=18, dynamo=False)
    with pytest.raises(ValueError, match="exit.linear.weight"):
        quantize_linear_node(onnx.load(str(session_path)), "exit.linear.weight")


def test_sdn_export_with_int8_ic_weights(tiny, tmp_path: Path, monkeypatch) -> None:
    """``sdn export --ic-weights int8``: every IC's linear layer in int8, the final head and the CNN in float; the
    runner's logits within the quantization's error bound of the float export's, its answers valid exits."""
    from sdn.cli import main
    from sdn.export_onnx import OnnxEarlyExit

    data = tiny.prepared(tmp_path / "data")
    checkpoint = tiny.train(data, tmp_path / "run")
    monkeypatch.setenv("SDN_TRACKING", "off")
    folders = {}
    for weights in ("float32", "int8"):
        folders[weights] = tmp_path / weights
        args = ["export", "--format", "onnx", "--checkpoint", str(checkpoint), "--out", str(folders[weights])]
        assert main([*args, "--ic-weights", weights]) == 0
    manifest = json.loads((folders["int8"] / "manifest.json").read_text())
    assert manifest["ic_weights"] == "int8" and manifest["one_graph"]
    for segment in manifest["segments"]:
        ops = {n.op_type for n in onnx.load(str(folders["int8"] / segment["file"])).graph.node}
        assert "MatMulInteger" in ops and "Gemm" not in ops
    for name in ("final.onnx", "cnn.onnx"):
        assert "MatMulInteger" not in {n.op_type for n in onnx.load(str(folders["int8"] / name)).graph.node}
    x = np.random.default_rng(2).standard_normal((16, 3, tiny.SIZE, tiny.SIZE)).astype(np.float32)
    runners = {w: OnnxEarlyExit(folder, threshold=0.5) for w, folder in folders.items()}
    float_logits, int8_logits = runners["float32"].logits(x), runners["int8"].logits(x)
    np.testing.assert_allclose(int8_logits[-1], float_logits[-1], rtol=0, atol=1e-4)  # the final head: float
    spread = np.abs(float_logits[:-1]).max()
    assert np.abs(int8_logits[:-1] - float_logits[:-1]).max() <= 0.1 * spread + 1e-4
    predictions, exits = runners["int8"](x)
    assert ((0 <= exits) & (exits < manifest["num_exits"])).all()
    assert ((0 <= predictions) & (predictions < tiny.CLASSES)).all()
    with pytest.raises(ValueError, match="ic_weights must be one of"):
        from sdn.export_onnx import export_checkpoint

        export_checkpoint(checkpoint, tmp_path / "bad", ic_weights="int4")
