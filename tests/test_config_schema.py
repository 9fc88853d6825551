"""The configuration schema: the shipped configs pass; a bad config stops before any job, naming the key."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml", "cifar10-jpeg.yaml"])
def test_shipped_configs_are_valid(name: str) -> None:
    jsonschema.validate(yaml.safe_load((REPO / "config" / name).read_text()), SCHEMA)


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
        ["-3 is less than the minimum of 1", "['recipes']['sdn']['epochs']"],
    ),
    "misspelt top-level key": (
        _bad(lambda c: c.update(seed=[0])),
        ["Additional properties are not allowed ('seed' was unexpected)"],
    ),
    "misspelt nested key": (
        _bad(lambda c: c["recipes"]["cnn"].update(epoch=3)),
        ["('epoch' was unexpected)", "['recipes']['cnn']"],
    ),
    "unknown data set source": (
        _bad(lambda c: c["datasets"]["digits"].update(source="mnist")),
        ["'mnist' is not one of", "cifar10", "['datasets']['digits']['source']"],
    ),
    "unknown device": (
        _bad(lambda c: c.update(device="gpu")),
        ["'gpu' is not one of ['auto', 'cpu', 'cuda']"],
    ),
    "backdoor on a data set not configured": (
        _bad(lambda c: c["backdoor"].update(dataset="cifar10")),
        ["backdoor.dataset='cifar10'", "['digits']"],
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
