"""`sdn batch`: several sdn commands in one process, each as if run alone."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sdn.cli import main
from sdn.commands.batch import environment, parse_command_line

TOY = Path(__file__).resolve().parent / "data" / "reproduction-toy" / "reproduction"
TOY_RUN = TOY / "cifar10" / "resnet56" / "s0"


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def test_a_command_line_gives_its_environment_and_argv(monkeypatch) -> None:
    monkeypatch.setenv("SDN_TEST_ID", "w1")
    env, argv = parse_command_line('SDN_MLFLOW_TAGS="rule=confusion,id=${SDN_TEST_ID}" A=1 confusion --out "a b"')
    assert env == {"SDN_MLFLOW_TAGS": "rule=confusion,id=w1", "A": "1"}
    assert argv == ["confusion", "--out", "a b"]
    with pytest.raises(ValueError, match="names no sdn command"):
        parse_command_line("A=1")
    with pytest.raises(ValueError, match="itself a batch"):
        parse_command_line("batch 'overthinking --help'")
    with pytest.raises(ValueError, match="cannot parse"):
        parse_command_line("overthinking --out 'unclosed")


def test_the_environment_applies_to_its_command_only(monkeypatch) -> None:
    monkeypatch.setenv("SDN_TEST_KEPT", "before")
    monkeypatch.delenv("SDN_TEST_NEW", raising=False)
    with environment({"SDN_TEST_KEPT": "inside", "SDN_TEST_NEW": "x"}):
        assert os.environ["SDN_TEST_KEPT"] == "inside" and os.environ["SDN_TEST_NEW"] == "x"
    assert os.environ["SDN_TEST_KEPT"] == "before" and "SDN_TEST_NEW" not in os.environ


def test_a_batch_writes_what_the_commands_write_alone(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SDN_TRACKING", "off")
    outputs, cnn = TOY_RUN / "sdn" / "outputs.npz", TOY_RUN / "cnn" / "outputs.npz"

    def lines(root: Path) -> list[str]:
        return [
            f"overthinking --outputs {outputs} --out {root / 'overthinking'} --split test",
            f"confusion --outputs {outputs} --cnn-outputs {cnn} --out {root / 'confusion'}",
            f"calibration --outputs {outputs} --out {root / 'calibration'} --fallback final --tolerance 0.5",
        ]

    for line in lines(tmp_path / "alone"):
        assert main(line.split()) == 0
    assert main(["batch", *lines(tmp_path / "batch")]) == 0
    for name in ("overthinking", "confusion", "calibration"):
        alone, batch = tmp_path / "alone" / name, tmp_path / "batch" / name
        assert _summary(batch) == _summary(alone)
        assert sorted(p.name for p in batch.iterdir()) == sorted(p.name for p in alone.iterdir())


def test_a_batch_stops_at_the_first_failing_command(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SDN_TRACKING", "off")
    outputs = TOY_RUN / "sdn" / "outputs.npz"
    code = main(
        [
            "batch",
            f"overthinking --outputs {tmp_path / 'absent.npz'} --out {tmp_path / 'first'} --split test",
            f"overthinking --outputs {outputs} --out {tmp_path / 'second'} --split test",
        ]
    )
    assert code == 2
    assert "absent.npz" in capsys.readouterr().err
    assert not (tmp_path / "second").exists()
