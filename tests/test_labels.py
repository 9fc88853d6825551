"""Figure titles name the model and the data set: run labels from the meta.json beside the outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sdn.report.labels import label_of_outputs, run_label
from sdn.report.plots import new_figure, savefig


def test_run_label_names_dataset_arch_variant_and_seed() -> None:
    assert run_label("cifar10", "resnet56", "ic_only", 0) == "cifar10 · resnet56 · SDN (IC-only) · seed 0"
    assert run_label("digits", "mobilenet") == "digits · mobilenet"


def test_label_of_outputs_reads_the_meta_beside_them(tmp_path: Path) -> None:
    (tmp_path / "meta.json").write_text(
        json.dumps({"dataset": "digits", "arch": "vgg16bn", "variant": "sdn", "seed": 2})
    )
    assert label_of_outputs(tmp_path / "outputs.npz") == "digits · vgg16bn · SDN (SDN training) · seed 2"
    assert label_of_outputs(tmp_path / "elsewhere" / "outputs.npz") is None  # no meta.json: no label, no error
    (tmp_path / "meta.json").write_text("{not json")
    assert label_of_outputs(tmp_path / "outputs.npz") is None


def test_savefig_puts_the_label_above_an_existing_title(tmp_path: Path) -> None:
    fig, ax = new_figure()
    ax.plot(np.arange(3))
    fig.suptitle("Overthinking")
    seen = {}
    original = fig.savefig

    def spy(*args: object, **kwargs: object) -> None:
        seen["title"] = fig.get_suptitle()
        original(*args, **kwargs)

    fig.savefig = spy  # type: ignore[method-assign]
    savefig(fig, tmp_path / "figure", label="digits · resnet56")
    assert seen["title"] == "digits · resnet56\nOverthinking"
    assert (tmp_path / "figure.png").stat().st_size > 0


def test_label_names_the_data_set_as_the_results_layout_does(tmp_path: Path) -> None:
    # The CIFAR-10 runs are prepared from a JPEG ImageFolder copy: their meta.json says "imagefolder".
    meta = {"dataset": "imagefolder", "arch": "resnet56", "variant": "sdn", "seed": 0}
    run = tmp_path / "results-paper" / "cifar10" / "resnet56" / "s0" / "sdn"
    run.mkdir(parents=True)
    (run / "meta.json").write_text(json.dumps(meta))
    assert label_of_outputs(run / "outputs.npz") == "cifar10 · resnet56 · SDN (SDN training) · seed 0"
    (tmp_path / "meta.json").write_text(json.dumps(meta))  # not in the layout: the loader's name stays
    assert label_of_outputs(tmp_path / "outputs.npz") == "imagefolder · resnet56 · SDN (SDN training) · seed 0"


def test_label_names_a_backdoor_run_by_its_folder(tmp_path: Path) -> None:
    # The backdoor experiment's IC-only training records variant "ic_only"; its folder says it is the backdoored one.
    meta = {"dataset": "imagefolder", "arch": "vgg16bn", "variant": "ic_only", "seed": 0}
    run = tmp_path / "cifar10" / "vgg16bn" / "s0" / "bd_ic_only"
    run.mkdir(parents=True)
    (run / "meta.json").write_text(json.dumps(meta))
    assert label_of_outputs(run / "outputs.npz") == "cifar10 · vgg16bn · backdoored SDN (IC-only) · seed 0"
    other = tmp_path / "cifar10" / "vgg16bn" / "s0" / "xx_ic_only"  # another folder name: not the layout
    other.mkdir()
    (other / "meta.json").write_text(json.dumps(meta))
    assert label_of_outputs(other / "outputs.npz") == "imagefolder · vgg16bn · SDN (IC-only) · seed 0"
