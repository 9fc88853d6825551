"""The original code's choices, selectable: ResNet ICs reading the block's sum before its last ReLU."""

from __future__ import annotations

import pytest
import torch

from sdn.models import create


def _pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    post = create("resnet56", num_classes=10, input_size=32)
    pre = create("resnet56", num_classes=10, input_size=32, ic_input="pre-relu")
    pre.load_state_dict(post.state_dict(), strict=True)  # same parameter names in both layouts
    return post.eval(), pre.eval()


def test_pre_relu_ic_sees_the_block_sum_before_the_relu_and_negative_values() -> None:
    post, pre = _pair()
    seen: list[torch.Tensor] = []
    handle = pre.exits[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        pre(x)
        h = post.stem(x)
        position = post.exit_positions[0]
        for block in post.blocks[:position]:
            h = block(h)
        block = post.blocks[position]
        expected = block.residual(h) + block.shortcut(h)  # the sum, before the block's last ReLU
    handle.remove()
    assert seen[0].min().item() < 0.0
    torch.testing.assert_close(seen[0], expected, rtol=1e-5, atol=1e-5)


def test_both_layouts_compute_the_same_network() -> None:
    post, pre = _pair()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        a, b = post(x), pre(x)
    torch.testing.assert_close(a[-1], b[-1], rtol=1e-5, atol=1e-5)  # the final head sees the same features
    assert not torch.allclose(a[0], b[0])  # the ICs do not


def test_a_cnn_checkpoint_loads_into_a_pre_relu_sdn() -> None:
    cnn = create("resnet56", num_classes=10, input_size=32, exits="none")
    sdn = create("resnet56", num_classes=10, input_size=32, ic_input="pre-relu")
    sdn.load_backbone_state(cnn.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(cnn.eval()(x)[-1], sdn.eval()(x)[-1], rtol=1e-5, atol=1e-5)


def test_ic_input_is_checked_per_architecture() -> None:
    with pytest.raises(ValueError, match=r"vgg16bn offers ic_input \['post-relu'\], got 'pre-relu'"):
        create("vgg16bn", num_classes=10, input_size=32, ic_input="pre-relu")
    with pytest.raises(ValueError, match="resnet56 offers ic_input"):
        create("resnet56", num_classes=10, input_size=32, ic_input="pre")


def test_paper_original_config_is_valid_and_sets_the_original_switches() -> None:
    from pathlib import Path

    import jsonschema
    import yaml

    repo = Path(__file__).resolve().parents[1]
    schema = yaml.safe_load((repo / "workflow" / "schemas" / "config.schema.yaml").read_text())
    config = yaml.safe_load((repo / "config" / "paper-original.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["exits"] == "paper-original"
    assert config["datasets"]["cifar10"]["normalization"] == "imagenet"
    assert config["analyses"]["early_exit"]["fallback"] == "most-confident"
    paper = yaml.safe_load((repo / "config" / "paper.yaml").read_text())
    assert config["archs"] == paper["archs"] and config["recipes"] == paper["recipes"]
    assert config["results"] != paper["results"]  # the two grids never share a results folder


def test_a_pre_relu_checkpoint_rebuilds_a_pre_relu_model(tmp_path) -> None:
    from sdn import checkpoint

    post, pre = _pair()
    meta = {"arch": "resnet56", "num_classes": 10, "input_size": 32, "exit_positions": list(pre.exit_positions)}
    checkpoint.save(tmp_path, pre, {**meta, "ic_input": "pre-relu"}, [])
    loaded, saved_meta = checkpoint.load_checkpoint(tmp_path / "model.pt")
    assert saved_meta["ic_input"] == "pre-relu"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours, expected, other = loaded(x), pre(x), post(x)
    torch.testing.assert_close(ours[0], expected[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours[0], other[0])  # not the post-ReLU layout with the same weights
    checkpoint.save(tmp_path / "old", post, meta, [])  # written before ic_input existed: post-ReLU
    old, _ = checkpoint.load_checkpoint(tmp_path / "old" / "model.pt")
    with torch.no_grad():
        torch.testing.assert_close(old(x)[0], other[0], rtol=1e-5, atol=1e-5)


def test_resume_refuses_other_model_switches_and_accepts_an_older_last_pt() -> None:
    from pathlib import Path

    from sdn.train import _check_resume

    current = {"arch": "resnet56", "ic_input": "pre-relu", "alpha_mode": "bounded", "ic_head": "paper"}
    with pytest.raises(ValueError, match=r"ic_input='post-relu', but this run has ic_input='pre-relu'"):
        _check_resume({"arch": "resnet56"}, current, Path("last.pt"))  # an older last.pt: the defaults
    _check_resume({"arch": "resnet56"}, {**current, "ic_input": "post-relu"}, Path("last.pt"))


def test_paper_original_dry_run_passes_the_switches_to_sdn_train(snakemake, tmp_path) -> None:
    import re
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "config" / "paper-original.yaml"
    done = snakemake(tmp_path, "-n", "--printshellcmds", configfile=config)
    assert done.returncode == 0, done.stderr[-3000:]
    commands = re.findall(r"sdn train [^\n]*", done.stdout)
    assert commands
    for command in commands:
        recipe = re.search(r"--recipe (\w+)", command).group(1)
        assert ("--ic-input pre-relu" in command) == ("--arch resnet56" in command), command
        assert ("--alpha-mode original" in command) == (recipe != "cnn"), command
        assert ("--backbone-mode train" in command) == (recipe == "ic_only"), command
