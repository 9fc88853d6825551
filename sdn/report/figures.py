"""Report figures: per-exit accuracy curves (CNN vs IC-only vs SDN training) and copies of every analysis figure
(backdoor and Grad-CAM included) under stable names ``{dataset}_{arch}_s{seed}_{variant}_{figure}.{png,pdf}``."""

from __future__ import annotations

import shutil
from pathlib import Path

from sdn.io import atomic_path
from sdn.outputs import exit_names
from sdn.report.collect import Collection, RunKey
from sdn.report.labels import VARIANT_NAMES
from sdn.report.summary import ACCURACY_VARIANTS


def accuracy_figure(found: Collection, key: RunKey, path_without_suffix: Path) -> list[Path]:
    """Per-exit test top-1 of IC-only and SDN training, with the CNN as a horizontal line; [] if nothing to draw."""
    from sdn.report.plots import new_figure, savefig

    curves = {v: r.top1() for v in ACCURACY_VARIANTS if (r := found.get(key, v)) is not None}
    curves = {v: c for v, c in curves.items() if c}
    if not curves:
        return []
    fig, ax = new_figure(figsize=(5.5, 3.6))
    longest = max(len(c) for c in curves.values())
    for variant, top1 in curves.items():
        if variant == "cnn":
            ax.axhline(top1[-1], color="black", linestyle="--", label=f"{VARIANT_NAMES[variant]} ({top1[-1]:.1f}%)")
        else:
            ax.plot(range(len(top1)), top1, marker="o", label=VARIANT_NAMES[variant])
    ax.set_xticks(range(longest), exit_names(longest))
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"{key.arch} on {key.dataset} (seed {key.seed}): accuracy per exit", fontsize=10)
    ax.legend(fontsize=8)
    return savefig(fig, path_without_suffix)


def copy_analysis_figures(found: Collection, figures_dir: Path) -> list[Path]:
    """Copy every analysis figure (backdoor included) into ``figures_dir`` under its stable name; return them."""
    copies: list[Path] = []
    for key in found.keys:
        for variant, result in sorted(found.variants.get(key, {}).items()):
            for files in result.figures.values():
                copies += [_copy(f, figures_dir / f"{key.slug}_{variant}_{f.name}") for f in files]
    return copies


def _copy(source: Path, target: Path) -> Path:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return target


def write_figures(found: Collection, figures_dir: Path) -> list[Path]:
    """Draw the report's own figures and copy the analyses' into ``figures_dir``; return every file written."""
    written: list[Path] = []
    for key in found.keys:
        written += accuracy_figure(found, key, figures_dir / f"{key.slug}_per_exit_accuracy")
    written += copy_analysis_figures(found, figures_dir)
    return written
