"""The command line helps the user: suggestions, no silent abbreviations, --version, honest help, no litter."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sdn import __version__
from sdn.cli import build_parser, main
from sdn.config_checks import schema_problems
from sdn.train import exit_accuracy_text

SCHEMA = str(Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml")


def error_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err


def test_misspelt_command_gets_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    assert "did you mean 'train'?" in error_of(["trian"], capsys)


def test_misspelt_option_is_refused_with_a_suggestion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--recipe", "cnn", "--arch", "x", "--data", "d", "--out", str(tmp_path / "o"), "--epoch", "3"]
    err = error_of(argv, capsys)  # --epoch is not silently --epochs
    assert "sdn train: error: unrecognized arguments: --epoch" in err and "did you mean '--epochs'" in err
    nested = ["backdoor", "analyze", "--cnn-outputs", "a", "--sdn-outputs", "b", "--out", "c", "--tolerence", "1"]
    assert "did you mean '--tolerance'?" in error_of(nested, capsys)
    assert not (tmp_path / "o").exists()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"sdn {__version__}"


def test_help_states_each_default_once_and_never_none() -> None:
    parser = build_parser()
    helps = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {name: sub.format_help() for name, sub in action.choices.items()}
    assert len(helps) > 10
    for name, text in helps.items():
        assert "(default: None)" not in text, name
        assert "(default: False)" not in text, name
    assert "(default: 1221)" in helps["train"] and "1221)" not in helps["train"].replace("(default: 1221)", "")
    assert "(default: auto)" in helps["gradcam"]
    gradcam = parser.parse_args(["gradcam", "--checkpoint", "m", "--data", "d", "--outputs", "o", "--out", "x"])
    assert gradcam.device == "auto"


def test_failed_command_leaves_no_output_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SDN_TRACKING", "SDN_TRACKING_URI", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)  # tracking on, journal only: the journal must not stay behind
    out = tmp_path / "new" / "confusion"
    assert main(["confusion", "--outputs", str(tmp_path / "missing.npz"), "--out", str(out)]) == 2
    assert not out.exists()


def test_progress_line_names_every_exit() -> None:
    assert exit_accuracy_text([10.0, None, 80.25]) == "IC1 10.0 IC2 - final 80.2"
    assert exit_accuracy_text([55.0]) == "final 55.0"
    assert exit_accuracy_text([]) == "n/a"


def test_misspelt_config_key_is_named_briefly() -> None:
    import yaml

    config = yaml.safe_load((Path(SCHEMA).parents[2] / "config" / "config.yaml").read_text())
    assert schema_problems(config, SCHEMA) == []
    config["recipes"] = {"cnn": {"epoch": 3}}
    (problem,) = schema_problems(config, SCHEMA)
    assert "'recipes.cnn.epoch'" in problem and "did you mean 'epochs'?" in problem and len(problem) < 300
    config.pop("recipes")
    config["seeds"] = "x"
    assert [p.startswith("config key 'seeds'") for p in schema_problems(config, SCHEMA)] == [True]


def test_summary_metrics_name_exits_like_training() -> None:
    from sdn.cli import numeric_leaves

    doc = {"per_exit_ece": [0.1, 0.2, 0.3], "destructive_count_by_ic": [1, 2], "budgets": [0.25], "n": 5}
    doc["policies"] = {"confidence": {"tolerance": {"test_exit_histogram": [3, 4]}}}
    doc["per_exit"] = {"attack_success": [9.0, 8.0]}
    assert numeric_leaves(doc) == {
        "per_exit_ece/ic1": 0.1,
        "per_exit_ece/ic2": 0.2,
        "per_exit_ece/final": 0.3,
        "destructive_count_by_ic/ic1": 1.0,
        "destructive_count_by_ic/ic2": 2.0,
        "budgets.0": 0.25,
        "n": 5.0,
        "policies.confidence.tolerance.test_exit_histogram/ic1": 3.0,
        "policies.confidence.tolerance.test_exit_histogram/final": 4.0,
        "per_exit.attack_success/ic1": 9.0,
        "per_exit.attack_success/final": 8.0,
    }


def test_an_analysis_job_starts_without_torch() -> None:
    """Each workflow job builds only its own command's options: an analysis of cached logits never imports torch
    (about 2 s per job on 2 cores, times the dozens of analysis jobs of `make paper-report`)."""
    import subprocess
    import sys

    probe = (
        "import sys; from sdn import cli; cli.build_parser(only='early-exit'); "
        "import sdn.commands.early_exit, sdn.analysis.early_exit, sdn.outputs, sdn.tracking, sdn.report.plots; "
        "print(sorted(m for m in ('torch', 'mlflow') if m in sys.modules))"
    )
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert found.strip() == "[]"
    parser = build_parser(only="early-exit")  # the one command built has its options; the others are still named
    assert "--tolerance" in parser.commands["early-exit"].format_help()
    assert set(parser.commands) == set(build_parser().commands)


def test_command_is_the_first_word_that_is_not_an_option() -> None:
    from sdn.cli import requested_command

    assert requested_command(["-v", "train", "--epochs", "3"]) == "train"
    assert requested_command(["--version"]) is None
