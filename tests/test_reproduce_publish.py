"""The published form of a run: float16 logits that leave the analyses within 0.1 points, manifest, provenance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sdn import io
from sdn.analysis import early_exit, overthinking
from sdn.device import cpu_model
from sdn.outputs import compact_outputs, load_split
from sdn.outputs import load as load_outputs
from sdn.reproduce import pack, publish


def fixture_outputs(seed: int = 0, num_classes: int = 10) -> dict[str, np.ndarray]:
    """Logits of 7 exits that grow more accurate with depth, offset by a large per-sample constant (so float16
    rounding bites), on a holdout and a test split."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for split, n in (("holdout", 2000), ("test", 4000)):
        labels = rng.integers(0, num_classes, n)
        logits = rng.normal(0.0, 2.0, (7, n, num_classes))
        strength = np.linspace(0.5, 4.0, 7)[:, None] * rng.uniform(0.0, 2.0, (1, n))
        logits[:, np.arange(n), labels] += strength
        logits += rng.uniform(-40.0, 40.0, (1, n, 1))
        arrays[f"{split}_logits"] = logits.astype(np.float32)
        arrays[f"{split}_labels"] = labels.astype(np.int64)
    arrays["exit_fraction"] = np.array([0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.02])
    arrays["exit_macs"] = arrays["exit_fraction"] * 1e8
    arrays["exit_ops"] = arrays["exit_fraction"] * 2e8
    arrays["exit_positions"] = np.array([3, 7, 11, 15, 19, 23], dtype=np.int64)
    return arrays


def _analyses(outputs: dict[str, np.ndarray]) -> dict[str, float]:
    result = early_exit.analyze(outputs, policies=("confidence",))["summary"]["policies"]["confidence"]
    numbers = {}
    for rule, entry in result.items():
        assert entry["status"] == "ok", entry
        numbers[f"{rule}_accuracy"] = entry["test_accuracy"]
        numbers[f"{rule}_reduction"] = entry["test_reduction_percent"]
    logits, labels = load_split(outputs, "test")
    waste = overthinking.wasteful(logits, labels, outputs["exit_fraction"])
    destroy = overthinking.destructive(logits, labels)
    numbers["wasteful"] = 100 * waste.early_correct_share
    numbers["destructive"] = 100 * destroy.destructive_share_of_errors
    numbers["oracle_cost"] = 100 * waste.oracle_cost_fraction
    return numbers


def test_float16_outputs_keep_every_analysis_within_a_tenth_of_a_point(tmp_path: Path) -> None:
    original = fixture_outputs()
    io.save_npz(tmp_path / "compact.npz", **compact_outputs(original))
    compact = load_outputs(tmp_path / "compact.npz")  # widened to float32 on read
    assert compact["test_logits"].dtype == np.float32
    for split in ("holdout", "test"):
        assert np.array_equal(compact[f"{split}_labels"], original[f"{split}_labels"])
        assert (compact[f"{split}_logits"].max(axis=-1) == 0).all()  # shifted: softmax unchanged
    assert np.array_equal(compact["exit_fraction"], original["exit_fraction"])
    ours, reference = _analyses(compact), _analyses(original)
    assert ours.keys() == reference.keys()
    for key, value in reference.items():
        assert ours[key] == pytest.approx(value, abs=0.1), key


def test_compact_outputs_survive_huge_logits_and_reject_nan() -> None:
    arrays = {"test_logits": np.array([[[1e6, 0.0, -1e6]]], dtype=np.float32), "test_labels": np.array([0])}
    compact = compact_outputs(arrays)["test_logits"]
    assert compact.dtype == np.float16 and np.isfinite(compact).all()
    assert compact.argmax(axis=-1).item() == 0
    arrays["test_logits"][0, 0, 1] = np.nan
    with pytest.raises(ValueError, match="test_logits holds NaN"):
        compact_outputs(arrays, source="run/outputs.npz")


def _finished_run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    io.save_npz(folder / "outputs.npz", **fixture_outputs())
    io.write_json(folder / "meta.json", {"arch": "resnet56"})
    io.write_json(folder / "metrics.json", {"splits": {}})
    io.write_text(folder / "history.csv", "epoch,loss\n1,0.5\n")
    (folder / "model.pt").write_bytes(b"weights")
    return folder


def test_publish_run_writes_the_published_files_and_the_manifest_verifies(tmp_path: Path) -> None:
    run = _finished_run(tmp_path / "run")
    root = tmp_path / "reproduction"
    dest = publish.publish_run(run, root / "cifar10" / "resnet56" / "s0" / "sdn", {"wall_s": {"train": 1.0}})
    assert sorted(p.name for p in dest.iterdir()) == [
        "history.csv",
        "meta.json",
        "metrics.json",
        "outputs.npz",
        "provenance.json",
    ]
    provenance = publish.read_provenance(dest)
    assert provenance["checkpoint"]["sha256"] == publish.sha256_file(run / "model.pt")
    assert provenance["wall_s"] == {"train": 1.0}
    assert (dest / "outputs.npz").stat().st_size < (run / "outputs.npz").stat().st_size
    publish.write_manifest(root)
    publish.verify(root)
    (dest / "metrics.json").write_text("{}")
    (dest / "extra.txt").write_text("x")
    with pytest.raises(ValueError, match="changed: cifar10/resnet56/s0/sdn/metrics.json.*extra.txt|not in the"):
        publish.verify(root)


def test_publish_run_names_what_is_missing(tmp_path: Path) -> None:
    run = _finished_run(tmp_path / "run")
    (run / "outputs.npz").unlink()
    with pytest.raises(FileNotFoundError, match="missing outputs.npz.*sdn evaluate"):
        publish.publish_run(run, tmp_path / "out", {})


def test_code_version_identifies_the_source() -> None:
    version = publish.code_version(Path(__file__).resolve().parents[1])
    assert len(version["source_sha256"]) == 64
    assert json.dumps(version)  # plain data


def test_cpu_model_is_read_from_cpuinfo_or_falls_back(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t: Test CPU @ 2.0GHz\n\nprocessor\t: 1\n")
    assert cpu_model(cpuinfo) == "Test CPU @ 2.0GHz"
    cpuinfo.write_text("processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 "
                       "avx512f avx512_bf16\n\nprocessor\t: 1\nmodel name\t: other\n")  # fmt: skip
    assert cpu_model(cpuinfo) == "AMD EPYC (family 25 model 17; avx2, avx512f, avx512_bf16)"
    assert cpu_model(tmp_path / "absent") not in ("", "Test CPU @ 2.0GHz")
    machine = publish.environment()
    assert machine["cpu"] and machine["cpu_count"] >= 1


def test_pack_splits_into_bounded_parts_and_unpacks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "big.bin").write_bytes(np.random.default_rng(0).bytes(5000))
    (root / "small.txt").write_text("hello")
    members = ["a/big.bin", "small.txt"]
    parts = pack.pack(root, members, tmp_path / "out", "resume", part_bytes=2048)
    assert len(parts) >= 3 and all(p.stat().st_size <= 2048 for p in parts)
    assert sum(p.stat().st_size for p in parts) <= pack.archive_size(root, members)
    names = pack.unpack(tmp_path / "out", "resume", tmp_path / "back")
    assert sorted(names) == members
    assert (tmp_path / "back" / "a" / "big.bin").read_bytes() == (root / "a" / "big.bin").read_bytes()
    parts[1].unlink()
    with pytest.raises(ValueError, match="not consecutive"):
        pack.unpack(tmp_path / "out", "resume", tmp_path / "again")
    with pytest.raises(FileNotFoundError, match="no published.tar.NN parts"):
        pack.unpack(tmp_path / "out", "published", tmp_path / "again")


def test_top_k_logits_keep_the_analyses_within_a_tenth_of_a_point(tmp_path: Path) -> None:
    original = fixture_outputs(seed=1, num_classes=100)
    io.save_npz(tmp_path / "dense.npz", **compact_outputs(original))
    io.save_npz(tmp_path / "top.npz", **compact_outputs(original, top_k=10))
    assert (tmp_path / "top.npz").stat().st_size < 0.5 * (tmp_path / "dense.npz").stat().st_size
    expanded = load_outputs(tmp_path / "top.npz")
    assert expanded["test_logits"].shape == original["test_logits"].shape
    assert not any(key.endswith("_topk_values") for key in expanded)
    assert np.array_equal(expanded["test_logits"].argmax(-1), original["test_logits"].argmax(-1))
    from sdn.analysis.arrays import softmax

    confidence = softmax(expanded["test_logits"]).max(-1)
    np.testing.assert_allclose(confidence, softmax(original["test_logits"]).max(-1), atol=2e-3)
    ours, reference = _analyses(expanded), _analyses(original)
    for key, value in reference.items():
        assert ours[key] == pytest.approx(value, abs=0.1), key


def test_incomplete_top_k_outputs_are_named(tmp_path: Path) -> None:
    arrays = compact_outputs(fixture_outputs(num_classes=20), top_k=5)
    del arrays["test_logits_rest_lse"]
    io.save_npz(tmp_path / "broken.npz", **arrays)
    with pytest.raises(
        ValueError, match=r"broken.npz: outputs hold test_logits_topk_values but not test_logits_rest"
    ):
        load_outputs(tmp_path / "broken.npz")


@pytest.mark.parametrize("top_k", [None, 10])
def test_analysis_commands_read_the_published_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, top_k: int | None
) -> None:
    from sdn.cli import main

    monkeypatch.setenv("SDN_TRACKING", "off")
    original = fixture_outputs(num_classes=20)
    io.save_npz(tmp_path / "outputs.npz", **compact_outputs(original, top_k=top_k))
    for command in ("early-exit", "overthinking", "confusion", "calibration"):
        out = tmp_path / command
        assert main([command, "--outputs", str(tmp_path / "outputs.npz"), "--out", str(out)]) == 0
        assert json.loads((out / "summary.json").read_text())
