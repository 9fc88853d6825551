"""The configuration schema: the shipped configs pass; a bad config stops before any job, naming the key."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from sdn.config import paper_recipe
from sdn.config_checks import PAPER_EPOCHS, SOURCE_SHAPES, ConfigError, check_config

REPO = Path(__file__).resolve().parents[1]

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml", "cifar10-jpeg.yaml"])
def test_shipped_configs_are_valid(name: str) -> None:
    config = yaml.safe_load((REPO / "config" / name).read_text())
    jsonschema.validate(config, SCHEMA)
    check_config(config)


def test_config_checks_know_the_data_set_shapes() -> None:
    from sdn.data.datasets import _SHAPES, SyntheticSpec

    assert {k: v for k, v in SOURCE_SHAPES.items() if k != "synthetic"} == _SHAPES
    assert SOURCE_SHAPES["synthetic"] == (SyntheticSpec().num_classes, SyntheticSpec().input_size)
    assert {kind: paper_recipe(kind, "resnet56").epochs for kind in PAPER_EPOCHS} == PAPER_EPOCHS


def test_config_checks_report_every_problem_with_its_key() -> None:
    config = _bad(lambda c: c["analyses"]["early_exit"].update(budgets=[0.5, float("nan")]))
    config["backdoor"].update(target=10, trigger_size=40)
    config["recipes"]["cnn"].update(milestones=[8, 3])
    with pytest.raises(ConfigError) as err:
        check_config(config)
    message = str(err.value)
    assert "analyses.early_exit.budgets[1] = nan" in message
    assert "backdoor.target = 10" in message and "0..9" in message
    assert "backdoor.trigger_x = 26 with backdoor.trigger_size = 40" in message and "trigger_y" in message
    assert "recipes.cnn.milestones = [8, 3]: must be increasing" in message
    check_config(_bad(lambda c: c["backdoor"].update(enabled=False, target=99)))  # off: not checked


def _bad(mutate) -> dict:
    config = copy.deepcopy(DEFAULT)
    mutate(config)
    return config


BAD_CONFIGS = {
    "unknown architecture": (
        _bad(lambda c: c.update(archs=["resnet56", "resnet18"])),
        ["'resnet18' is not one of", "vgg16bn", "wrn32_4", "['archs'][1]"],
    ),
    "negative epochs": (
        _bad(lambda c: c["recipes"]["sdn"].update(epochs=-3)),
        ["-3 is less than the minimum of 1", "config key 'recipes.sdn.epochs'"],
    ),
    "misspelt top-level key": (
        _bad(lambda c: c.update(seed=[0])),
        ["unknown config key 'seed' (did you mean 'seeds'?)"],
    ),
    "misspelt nested key": (
        _bad(lambda c: c["recipes"]["cnn"].update(epoch=3)),
        [
            "unknown config key 'recipes.cnn.epoch' (did you mean 'epochs'?)",
            "allowed here: batch_size, clip_grad_norm, epochs",
        ],
    ),
    "unknown data set source": (
        _bad(lambda c: c["datasets"]["digits"].update(source="mnist")),
        ["'mnist' is not one of", "cifar10", "config key 'datasets.digits.source'"],
    ),
    "unknown device": (
        _bad(lambda c: c.update(device="gpu")),
        ["'gpu' is not one of ['auto', 'cpu', 'cuda']"],
    ),
    "backdoor on a data set not configured": (
        _bad(lambda c: c["backdoor"].update(dataset="cifar10")),
        ["backdoor.dataset='cifar10'", "['digits']"],
    ),
    # issue 12, fault 6: values that passed the schema and failed (or not) inside a job
    "learning rate NaN": (
        _bad(lambda c: c["recipes"]["sdn"].update(lr=float("nan"))),
        ["config key recipes.sdn.lr = nan", "not a finite number"],
    ),
    "learning rate infinite": (
        _bad(lambda c: c["recipes"]["cnn"].update(lr=float("inf"))),
        ["inf is greater than the maximum of 10", "config key 'recipes.cnn.lr'"],
    ),
    "holdout fraction above 1": (
        _bad(lambda c: c["datasets"]["digits"].update(holdout=1.5)),
        ["1.5 is greater than or equal to the maximum of 1", "config key 'datasets.digits.holdout'"],
    ),
    "epochs 1e12": (
        _bad(lambda c: c["recipes"]["sdn"].update(epochs=10**12)),
        ["1000000000000 is greater than the maximum of 10000", "config key 'recipes.sdn.epochs'"],
    ),
    "batch size 1e9": (
        _bad(lambda c: c["recipes"]["cnn"].update(batch_size=10**9)),
        ["1000000000 is greater than the maximum of 65536", "config key 'recipes.cnn.batch_size'"],
    ),
    "milestone beyond the schedule": (
        _bad(lambda c: c["recipes"]["sdn"].update(milestones=[7, 99])),
        ["config key recipes.sdn.milestones = [7, 99]", "[99] outside the schedule", "2..10", "epochs = 10"],
    ),
    "milestone beyond the paper schedule": (
        _bad(lambda c: c["recipes"]["ic_only"].update(epochs=None, milestones=[30])),
        ["config key recipes.ic_only.milestones = [30]", "2..25", "the paper's 25 epochs"],
    ),
    "backdoor target 99 of 10 classes": (
        _bad(lambda c: c["backdoor"].update(target=99)),
        ["config key backdoor.target = 99", "10 classes", "0..9"],
    ),
    "backdoor target out of any range": (
        _bad(lambda c: c["backdoor"].update(target=100000)),
        ["100000 is greater than the maximum of 999", "config key 'backdoor.target'"],
    ),
    "trigger outside the image": (
        _bad(lambda c: c["backdoor"].update(trigger_x=30, trigger_y=40)),
        ["config key backdoor.trigger_x = 30 with backdoor.trigger_size = 5", "32x32", "trigger_x in 0..27"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_fails_before_any_job_naming_the_key(snakemake, case: str, tmp_path: Path) -> None:
    config, expected = BAD_CONFIGS[case]
    configfile = tmp_path / "bad.yaml"
    configfile.write_text(yaml.safe_dump(config))
    done = snakemake(tmp_path, "--cores", "1", configfile=configfile)
    message = done.stdout + done.stderr
    assert done.returncode != 0
    for fragment in expected:
        assert fragment in message, f"{fragment!r} missing from:\n{message[-3000:]}"
    assert "Building DAG of jobs" not in message  # stopped at parse time: no job ran
    assert not (tmp_path / "results").exists()


def test_omitted_keys_take_the_schema_defaults(snakemake, tmp_path: Path) -> None:
    minimal = {"seeds": [0], "archs": ["mobilenet"], "datasets": {"digits": {"source": "digits"}}}
    configfile = tmp_path / "minimal.yaml"
    configfile.write_text(yaml.safe_dump(minimal))
    done = snakemake(tmp_path, "-n", "--printshellcmds", configfile=configfile)
    assert done.returncode == 0, done.stderr
    assert "--policies confidence,entropy,patience --budgets 0.25,0.5,0.75 --fallback final --tolerance 0.5" in (
        done.stdout
    )
    assert "--device auto" in done.stdout and "--epochs" not in done.stdout  # paper schedules
    assert "rule poison_data" not in done.stdout  # backdoor off unless enabled
    assert "results/digits/mobilenet/s0/ic_only/analysis/gradcam/gradcam.png" in done.stdout


def test_literal_yaml_forms_of_fault_6_are_rejected(snakemake, tmp_path: Path) -> None:
    """As a user types them: `.nan`, `1e12` / `1e9` (strings to YAML 1.1), `1.0e12` (a float) on --config."""
    text = (REPO / "config" / "config.yaml").read_text()
    text = text.replace(
        "cnn: {epochs: 10, lr: 0.05, batch_size: 32, milestones: [7]}",
        "cnn: {epochs: 1e12, lr: .nan, batch_size: 1e9, milestones: [7]}",
    )
    assert "lr: .nan" in text
    configfile = tmp_path / "bad.yaml"
    configfile.write_text(text)
    done = snakemake(tmp_path, "-n", configfile=configfile)
    assert done.returncode != 0 and "config key 'recipes.cnn.epochs'" in done.stdout + done.stderr
    done = snakemake(
        tmp_path, "-n", "--config", "recipes={'sdn': {'epochs': 1.0e12}}", configfile=REPO / "config" / "config.yaml"
    )
    message = done.stdout + done.stderr
    assert done.returncode != 0 and "config key 'recipes.sdn.epochs'" in message, message[-2000:]
    assert not (tmp_path / "results").exists()
