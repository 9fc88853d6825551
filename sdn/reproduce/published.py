"""The published runs a workflow in published mode (config key ``published``) takes as its trained models' outputs.

python -m sdn.reproduce.published [ROOT]     # list the runs under ROOT (default reproduction/); exit 1 when none

A run is ``ROOT/<dataset>/<arch>/s<seed>/<variant>/`` holding every file of :data:`RUN_FILES`. Nothing here trains
or evaluates: the workflow copies these files into its results layout and every analysis, table and figure follows.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

RUN_FILES = ("meta.json", "metrics.json", "history.csv", "outputs.npz")
_SEED = re.compile(r"s([0-9]+)")


def no_runs_message(root: str | os.PathLike[str]) -> str:
    progress = grids_in_progress(root)
    return (
        f"{root}/ holds no published runs (expected {root}/<dataset>/<arch>/s<seed>/<variant>/ with "
        f"{', '.join(RUN_FILES)}). Get them on a GPU machine with scripts/gpu-reproduce.sh OUT DATASET ARCHS "
        "[SEEDS] (README, 'Paper-scale runs on a GPU machine without network'), then install them here with "
        "`python -m sdn.reproduce.ingest OUT`, or a call at a time on a CPU with scripts/cpu-reproduce.sh DATASET "
        "ARCHS [SEEDS], and run `make paper-report` again."
        + (f" In progress: {'; '.join(progress)}." if progress else "")
    )


def grids_in_progress(root: str | os.PathLike[str]) -> list[str]:
    """One line per unfinished job of the grids summarised under ``root`` (``<dataset>/grid-<device>.json``, written
    by the runner with every call): "cifar10 on cpu: resnet56/s0/cnn partial, 23/100 epochs"."""
    lines = []
    for grid_file in sorted(Path(root).glob("*/grid-*.json")):
        try:
            jobs = json.loads(grid_file.read_text())["jobs"]
            device = grid_file.stem.removeprefix("grid-")
            for key, job in jobs.items():
                if job["status"] != "evaluated":
                    epochs = f", {job['epochs_done']}/{job['epochs']} epochs" if "epochs_done" in job else ""
                    lines.append(f"{grid_file.parent.name} on {device}: {key} {job['status']}{epochs}")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            lines.append(f"{grid_file}: unreadable")
    return lines


def find_runs(root: str | os.PathLike[str]) -> dict[tuple[str, str, str], set[str]]:
    """{(dataset, arch, seed): variants with every file of RUN_FILES} under ``root``; {} when there is none."""
    root = Path(root)
    found: dict[tuple[str, str, str], set[str]] = {}
    if not root.is_dir():
        return found
    for meta in sorted(root.glob("*/*/s*/*/meta.json")):
        run = meta.parent
        seed = _SEED.fullmatch(run.parent.name)
        if seed is None or not all((run / name).is_file() for name in RUN_FILES):
            continue
        key = (run.parent.parent.parent.name, run.parent.parent.name, seed.group(1))
        found.setdefault(key, set()).add(run.name)
    return found


# config key under `backdoor` -> where the poisoning records it (meta.json of `sdn backdoor poison`, copied into a
# published backdoor run's provenance.json as "backdoor")
BACKDOOR_KEYS = {
    "target": ("target",),
    "rate": ("rate",),
    "trigger_size": ("trigger", "size"),
    "trigger_x": ("trigger", "x"),
    "trigger_y": ("trigger", "y"),
}


def backdoor_config_mismatches(run: str | os.PathLike[str], backdoor_config: dict) -> list[str]:
    """What the config's ``backdoor`` keys say differently from the poisoning a published backdoor run
    (``run``: its bd_cnn folder) was trained on, one line per key ("target: config 5, published 3"); [] when they
    agree or the run records no poisoning (published before the runner recorded it)."""
    path = Path(run) / "provenance.json"
    try:
        recorded = json.loads(path.read_text()).get("backdoor") or {}
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read the published backdoor run's provenance ({error})") from error
    mismatches = []
    for key, where in BACKDOOR_KEYS.items():
        value: object = recorded
        for part in where:
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None and key in backdoor_config and float(value) != float(backdoor_config[key]):
            mismatches.append(f"{key}: config {backdoor_config[key]}, published {value}")
    return mismatches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdn.reproduce.published", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", default="reproduction")
    args = parser.parse_args(argv)
    runs = find_runs(args.root)
    if not runs:
        print(f"error: {no_runs_message(args.root)}", file=sys.stderr)
        return 1
    for (dataset, arch, seed), variants in sorted(runs.items()):
        print(f"{dataset} {arch} s{seed}: {' '.join(sorted(variants))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
