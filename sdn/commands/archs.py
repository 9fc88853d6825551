"""``sdn archs``: list the registered architectures."""

from __future__ import annotations

import argparse

NAME = "archs"
HELP = "List the registered architectures and how to name torchvision/timm networks."
EXTERNAL = """\
Any torchvision classification builder or timm model works too, by name:
  torchvision/<builder>  e.g. torchvision/resnet18, torchvision/mobilenet_v3_large, torchvision/vit_b_16
  timm/<name>            e.g. timm/resnet18, timm/deit_tiny_patch16_224 (needs: pip install -e '.[timm]')
Their blocks are found by family ({families}); exits 'paper' puts ICs at the paper's cost fractions
(15%..90%), 'cost:0.25,0.5,0.75' at others, 'all' after every block. Pretrained: --weights DEFAULT (hub) or
--weights path/to/state_dict.pth. Another family: sdn.models.external.register_family (README)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


def run(args: argparse.Namespace) -> int:
    del args
    from sdn.models import get_spec, list_archs

    for name in list_archs():
        spec = get_spec(name)
        print(f"{name:12s} exits after blocks {list(spec.paper_exits)}  {spec.description}")
    from sdn.models.external import families

    print()
    print(EXTERNAL.format(families=", ".join(families())))
    return 0
