"""Shared matplotlib helpers: every figure is written as PNG and PDF, atomically, with the Agg backend."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sdn.io import atomic_path

FIGURE_FORMATS = ("png", "pdf")


def new_figure(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """``plt.subplots(*args, **kwargs)`` with the non-interactive Agg backend selected first."""
    plt = _pyplot()
    return plt.subplots(*args, **kwargs)


def savefig(
    fig: Any, path_without_suffix: str | os.PathLike[str], *, dpi: int = 150, label: str | None = None
) -> list[Path]:
    """Write ``fig`` to ``<path>.png`` and ``<path>.pdf`` (temporary name + rename), close it, return the paths.

    ``label`` (which model on which data, :func:`sdn.report.labels.run_label`) heads the figure, above any title
    it already has.
    """
    plt = _pyplot()
    if label:
        existing = fig.get_suptitle()
        fig.suptitle(f"{label}\n{existing}" if existing else label, fontsize=10)
    base = Path(path_without_suffix)
    if base.suffix.lower() in {f".{fmt}" for fmt in FIGURE_FORMATS}:
        raise ValueError(f"savefig takes a path without suffix, got {str(base)!r}")
    written = []
    try:
        for fmt in FIGURE_FORMATS:
            target = base.with_name(f"{base.name}.{fmt}")
            with atomic_path(target) as tmp:
                fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
            written.append(target)
    finally:
        plt.close(fig)
    return written


def _pyplot() -> Any:
    import matplotlib

    if matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt
