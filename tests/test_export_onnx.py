"""ONNX export: the segment graphs give PyTorch's logits, and the ONNX Runtime runner PyTorch's exit decisions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from sdn.analysis import early_exit as ee  # noqa: E402
from sdn.analysis.arrays import softmax  # noqa: E402
from sdn.checkpoint import load_checkpoint  # noqa: E402
from sdn.cli import main  # noqa: E402
from sdn.data import DeviceLoader, load_prepared  # noqa: E402
from sdn.export_onnx import OnnxEarlyExit, read_manifest, session_options, shared_thread_pool  # noqa: E402
from sdn.inference import early_exit_forward  # noqa: E402


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory) -> dict:
    """A tiny SDN trained for two epochs, exported with ``sdn export``, and its test split."""
    root = tmp_path_factory.mktemp("onnx")
    data = tiny.prepared(root / "data", n_test=48)
    checkpoint = tiny.train(data, root / "run")
    out = root / "onnx"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SDN_TRACKING", "off")
        assert main(["export", "--format", "onnx", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    prepared = load_prepared(data)
    loader = DeviceLoader(
        prepared.split("test"), prepared.info, batch_size=64, shuffle=False, augment=False, device="cpu", seed=0
    )
    images = torch.cat([x for x, _ in loader])
    labels = torch.cat([y for _, y in loader]).numpy()
    model, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        logits = np.stack([o.numpy() for o in model(images)])
    return {"out": out, "model": model, "images": images, "labels": labels, "logits": logits}


def test_segment_graphs_give_pytorchs_logits(exported) -> None:
    runner = OnnxEarlyExit(exported["out"], threshold=0.5)
    onnx_logits = runner.logits(exported["images"].numpy())
    assert onnx_logits.shape == exported["logits"].shape
    np.testing.assert_allclose(onnx_logits, exported["logits"], atol=1e-4, rtol=0)
    cnn = runner.cnn(exported["images"].numpy())
    assert cnn.tolist() == exported["logits"][-1].argmax(axis=1).tolist()


def _thresholds(logits: np.ndarray, policy: str) -> list[float]:
    """Thresholds near the quarter points of the first IC's own scores, so some samples exit there and some go on
    whatever the training reached, plus the ends of the range. Each sits in the middle of the widest gap between
    neighbouring scores near its quarter point: a score a last bit away from a threshold could otherwise exit in
    one engine and not in another, on some CPUs."""
    probs = softmax(logits[0])
    scores = np.sort(probs.max(axis=1) if policy == "confidence" else ee.normalised_entropy(probs))
    gaps = np.diff(scores)
    chosen = [0.0, 1.0]
    for q in (0.25, 0.5, 0.75):
        centre = round(q * (len(gaps) - 1))
        lo, hi = max(centre - 4, 0), min(centre + 5, len(gaps))
        k = lo + int(np.argmax(gaps[lo:hi]))
        assert gaps[k] > 1e-5, f"scores too close together near the {q} quantile: {scores[lo : hi + 1]}"
        chosen.append(float(scores[k] + scores[k + 1]) / 2)
    return chosen


@pytest.mark.parametrize("engine", ["one-graph", "segments"])
@pytest.mark.parametrize("policy", ["confidence", "entropy"])
def test_runner_decides_like_pytorch_and_the_offline_simulation(exported, policy: str, engine: str) -> None:
    images, logits, labels = exported["images"], exported["logits"], exported["labels"]
    cost = np.linspace(0.25, 1.0, logits.shape[0])
    spread = set()
    for threshold in _thresholds(logits, policy):
        runner = OnnxEarlyExit(exported["out"], threshold=threshold, policy=policy, engine=engine)
        assert runner.engine == engine
        onnx_pred, onnx_exit = runner(images.numpy())
        torch_pred, torch_exit = early_exit_forward(exported["model"], images, policy, threshold)
        offline = ee.simulate(softmax(logits), labels, cost, policy, threshold)
        assert onnx_exit.tolist() == torch_exit.tolist() == offline.exit_index.tolist()
        assert onnx_pred.tolist() == torch_pred.tolist() == offline.predictions.tolist()
        one_at_a_time = [runner(images[i : i + 1].numpy()) for i in range(8)]
        assert [int(e[0]) for _, e in one_at_a_time] == onnx_exit[:8].tolist()  # the batch-1 path
        assert [int(p[0]) for p, _ in one_at_a_time] == onnx_pred[:8].tolist()
        spread |= set(onnx_exit.tolist())
    assert len(spread) >= 2  # both an IC and a later exit answered


def test_the_one_graph_engine_is_the_default_and_answers_an_empty_batch(exported) -> None:
    runner = OnnxEarlyExit(exported["out"], threshold=0.5)
    assert runner.engine == "one-graph"
    for engine in ("one-graph", "segments"):
        predictions, exits = OnnxEarlyExit(exported["out"], threshold=0.5, engine=engine)(
            np.zeros((0, *runner.input_shape), dtype=np.float32)
        )
        assert predictions.shape == exits.shape == (0,)


@pytest.mark.parametrize("batch", [1, 5])
def test_the_one_graph_runs_no_level_past_the_exits_taken(exported, tmp_path: Path, batch: int) -> None:
    """ONNX Runtime's profile of the one graph: with every image exiting at IC 1 (threshold 0) no node of a later
    level runs; with none exiting (a threshold above 1, fed to the graph directly) the final level's nodes do."""
    import onnxruntime as ort

    manifest = read_manifest(exported["out"])
    images = exported["images"][:batch].numpy()
    chain = "r" if batch == 1 else "b"
    last = manifest["num_exits"] - 1

    def levels_run(threshold: float) -> set[int]:
        options = session_options(torch.get_num_threads())
        options.enable_profiling = True
        options.profile_file_prefix = str(tmp_path / f"profile-{batch}-{threshold}")
        path = exported["out"] / manifest["one_graph"]["confidence"]
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        session.run(None, {"x": images, "threshold": np.array(threshold)})
        events = json.loads(Path(session.end_profiling()).read_text())
        names = [e["name"] for e in events if e.get("cat") == "Node"]
        return {k for k in range(last + 1) if any(n.startswith(f"{chain}{k}_") for n in names)}

    assert levels_run(0.0) == {0}
    assert levels_run(2.0) == set(range(last + 1))


def test_an_export_whose_segments_cannot_be_composed_runs_on_the_segments(
    exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sdn import export_onnx, onnx_exit_graph

    def refuse(*args: object, **kwargs: object) -> None:
        raise NotImplementedError("segment graph 0 has a control-flow node (Loop)")

    monkeypatch.setattr(onnx_exit_graph, "build", refuse)
    with pytest.warns(UserWarning, match="no one-graph early exit written.*Loop"):
        export_onnx.export(exported["model"], tmp_path / "out")
    assert read_manifest(tmp_path / "out")["one_graph"] == {}
    assert not list((tmp_path / "out").glob("early_exit_*"))
    assert OnnxEarlyExit(tmp_path / "out", threshold=0.5).engine == "segments"


def test_an_export_of_format_1_runs_on_the_segments(exported, tmp_path: Path) -> None:
    """A folder written before the one-graph early exit (format 1) still runs; asking it for the one graph says
    to export again."""
    old = tmp_path / "old"
    old.mkdir()
    manifest = json.loads((exported["out"] / "manifest.json").read_text())
    for name in [s["file"] for s in manifest["segments"]] + ["final.onnx", "cnn.onnx"]:
        (old / name).write_bytes((exported["out"] / name).read_bytes())
    manifest["format_version"] = 1
    del manifest["one_graph"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    runner = OnnxEarlyExit(old, threshold=0.5)
    assert runner.engine == "segments"
    new = OnnxEarlyExit(exported["out"], threshold=0.5)
    images = exported["images"].numpy()
    assert [a.tolist() for a in runner(images)] == [a.tolist() for a in new(images)]
    with pytest.raises(ValueError, match="no one-graph early exit in this export.*export the model again"):
        OnnxEarlyExit(old, threshold=0.5, engine="one-graph")


def test_a_runner_with_another_thread_count_uses_the_process_wide_pool(exported) -> None:
    """ONNX Runtime's process-wide pool is sized once; a later runner asking for another size still runs (it used
    to fail inside ONNX Runtime) and says which size it got."""
    pool = shared_thread_pool(torch.get_num_threads())
    if not pool:
        pytest.skip("this ONNX Runtime has no process-wide thread pool")
    with pytest.warns(UserWarning, match=f"process-wide thread pool has {pool} thread"):
        runner = OnnxEarlyExit(exported["out"], threshold=0.5, threads=pool + 1)
    assert runner(exported["images"][:3].numpy())[0].shape == (3,)


def test_manifest_lists_every_segment(exported) -> None:
    manifest = read_manifest(exported["out"])
    assert manifest["num_exits"] == exported["model"].num_exits
    assert [s["exit"] for s in manifest["segments"]] == list(range(exported["model"].num_exits - 1))
    assert manifest["input_shape"] == list(exported["images"].shape[1:])


def test_an_ic_reading_a_4x4_map_is_exported_without_its_unit_pools(exported) -> None:
    """The tiny SDN's ICs 2 and 3 read 4x4 maps (the paper's pooling kernel 1: the identity); their segments carry
    no pool, IC 1's (an 8x8 map, kernel 2) both of the mixed pooling; the model's own modules are untouched."""
    import onnx

    from sdn.models import MixedPool

    manifest = read_manifest(exported["out"])
    pools = []
    for segment in manifest["segments"]:
        graph = onnx.load(str(exported["out"] / segment["file"])).graph
        pools.append(sorted(n.op_type for n in graph.node if n.op_type in ("MaxPool", "AveragePool")))
    assert pools == [["AveragePool", "MaxPool"], [], []]
    kernels = [ic.pool.max_pool.kernel_size for ic in exported["model"].exits if isinstance(ic.pool, MixedPool)]
    assert kernels == [2, 1, 1]


def test_bad_input_is_named(
    exported, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SDN_TRACKING", "off")
    with pytest.raises(FileNotFoundError, match="manifest.json not found"):
        OnnxEarlyExit(tmp_path, threshold=0.5)
    runner = OnnxEarlyExit(exported["out"], threshold=0.5)
    with pytest.raises(ValueError, match=r"images must be float32 \[B, 3, 8, 8\]"):
        runner(np.zeros((2, 1, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="supports policies"):
        OnnxEarlyExit(exported["out"], threshold=1, policy="patience")
    with pytest.raises(ValueError, match="engine must be one of"):
        OnnxEarlyExit(exported["out"], threshold=0.5, engine="tensorrt")
    with pytest.raises(ValueError):
        OnnxEarlyExit(exported["out"], threshold=1.5)
    broken = tmp_path / "broken"
    broken.mkdir()
    manifest = json.loads((exported["out"] / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FileNotFoundError, match="missing; export again"):
        OnnxEarlyExit(broken, threshold=0.5)
    assert main(["export", "--format", "onnx", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path)])
    assert "none.pt not found: pass a model.pt written by sdn train" in capsys.readouterr().err
