"""Fault injection: a results folder whose name has a space, a quote and non-ASCII letters.

Every path a rule hands to the shell must stay one word: an unquoted `> {log}` with `/data/victim dir/results`
once wrote a job's usage text into `/data/victim`. The workflow runs in a folder of its own; afterwards the outputs
exist under the odd name and nothing was written beside it.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ODD = "victim dir 'q' é"  # a space, a single quote and a non-ASCII letter


def odd_config(tmp_path: Path, tracking: bool = False) -> Path:
    """The embedded default cut to one arch and one epoch, with results, logs and data under the odd folder
    (with ``tracking``: the default MLflow store, SQLite in the results folder)."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    base = tmp_path / ODD
    config["results"] = str(base / "results")
    config["logs"] = str(base / "logs")
    config["data_root"] = str(base / "data")
    config["archs"] = ["mobilenet"]
    config["tracking_uri"] = None if tracking else "off"
    config["recipes"] = {
        "cnn": {"epochs": 1, "lr": 0.05, "batch_size": 32, "milestones": None},
        "ic_only": {"epochs": 1, "lr": None, "batch_size": 32},
        "sdn": {"epochs": 1, "lr": 0.05, "batch_size": 32, "milestones": None},
    }
    config["backdoor"]["enabled"] = False
    config["analyses"]["gradcam"]["enabled"] = False
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def shell_commands(output: str) -> list[str]:
    """The shell command of every job a `--printshellcmds` dry run prints."""
    commands = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        lines = [line.strip().removeprefix("Shell command:").strip() for line in block.splitlines()]
        commands += [line for line in lines if " sdn " in f" {line}" or line.startswith("printf ")]
    return commands


def test_every_rule_quotes_its_paths(snakemake, tmp_path: Path) -> None:
    config = odd_config(tmp_path)
    gradcam = yaml.safe_load(config.read_text(encoding="utf-8"))
    gradcam["analyses"]["gradcam"]["enabled"] = True
    gradcam["backdoor"].update(enabled=True, arch="mobilenet")
    config.write_text(yaml.safe_dump(gradcam, allow_unicode=True), encoding="utf-8")
    done = snakemake(tmp_path, "-n", "--printshellcmds", configfile=config)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    commands = shell_commands(done.stdout)
    rules = set(re.findall(r"^(?:local)?rule (\w+):", done.stdout, flags=re.MULTILINE)) - {"all"}
    assert len(commands) >= len(rules) >= 10, done.stdout[-3000:]
    base = str(tmp_path / ODD)
    for command in commands:
        words = shlex.split(command)
        # every word mentioning the odd folder is a whole path under it: the shell did not split it
        assert any(word.startswith(base) for word in words), command
        for word in words:
            if ("victim" in word or "é" in word) and not word.startswith("{"):  # not the resolved config's JSON
                assert base in word, f"a path was split into words: {word!r} in {command}"
        redirects = [words[i + 1] for i, word in enumerate(words) if word in (">", "2>")]
        assert redirects and all(target.startswith(base) for target in redirects), command


@pytest.mark.slow
def test_results_folder_with_space_quote_and_non_ascii(snakemake, tmp_path: Path) -> None:
    config = odd_config(tmp_path, tracking=True)
    results = tmp_path / ODD / "results"
    run = results / "digits" / "mobilenet" / "s0" / "sdn"
    target = run / "analysis" / "early_exit" / "summary.json"
    done = snakemake(tmp_path, str(target), "--cores", "1", "--resources", "gpu=0", configfile=config, timeout=1200)
    assert done.returncode == 0, done.stderr[-6000:]
    for name in ("model.pt", "meta.json", "outputs.npz", "metrics.json"):
        assert (run / name).is_file(), name
    assert target.is_file()
    assert (results / "data" / "digits" / "test.pt").is_file()
    assert (tmp_path / ODD / "logs" / "train" / "digits_mobilenet_s0_sdn.log").is_file()
    # nothing beside the odd folder: no `victim`, no `dir`, no stray log or usage text
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".snakemake") == sorted([ODD, "config.yaml"])
    assert {"logs", "results"} <= {p.name for p in (tmp_path / ODD).iterdir()} <= {"data", "logs", "results"}
