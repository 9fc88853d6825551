"""Install the runs a GPU call published into the repository's ``reproduction/`` tree and rewrite its manifest; put
the checkpoints it sent back (``models.tar``) into the git-ignored ``checkpoints/``, each checked against the sha256
its run's provenance recorded.

python -m sdn.reproduce.ingest FOLDER [--repo .]      # FOLDER holds published.tar.NN (from gpu-reproduce.sh)
python -m sdn.reproduce.ingest --verify [--repo .]    # check reproduction/MANIFEST.sha256
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path, PurePosixPath

from sdn import io
from sdn.reproduce import pack, publish


def ingest(folder: str | os.PathLike[str], repo: str | os.PathLike[str]) -> list[str]:
    """Unpack ``folder/published.tar.*`` into ``repo`` (members under ``reproduction/``); rewrite the manifest."""
    names = pack.unpack(folder, "published", repo)
    bad = [n for n in names if not n.startswith("reproduction/")]
    if bad:
        raise ValueError(f"{folder}/published.tar holds files outside reproduction/: {bad[:3]}")
    publish.write_manifest(Path(repo) / "reproduction")
    return names


def ingest_models(folder: str | os.PathLike[str], repo: str | os.PathLike[str]) -> list[str]:
    """Install ``folder/models.tar.*`` (none: nothing to do) as ``repo/checkpoints/<dataset>/<arch>/s<seed>/<variant>/
    model.pt``, each only once its sha256 equals the one in ``repo/reproduction/.../provenance.json`` (ingest the
    published runs first); ValueError naming the checkpoint otherwise, with nothing of it installed."""
    try:
        pack.parts_of(folder, "models")
    except FileNotFoundError:
        return []
    repo = Path(repo)
    installed = []
    with tempfile.TemporaryDirectory(prefix=".models-", dir=repo) as tmp:
        names = pack.unpack(folder, "models", tmp)
        for name in sorted(names):
            parts = PurePosixPath(name).parts
            if len(parts) != 6 or parts[0] != publish.CHECKPOINTS_DIR or parts[-1] != "model.pt":
                expected = f"{publish.CHECKPOINTS_DIR}/<dataset>/<arch>/s<seed>/<variant>/model.pt"
                raise ValueError(f"{folder}/models.tar: unexpected member {name!r} (expected {expected})")
            provenance = repo / "reproduction" / Path(*parts[1:-1]) / "provenance.json"
            recorded = ((io.read_json(provenance) if provenance.is_file() else None) or {}).get("checkpoint") or {}
            if "sha256" not in recorded:
                raise ValueError(f"{name}: {provenance} records no checkpoint sha256"
                                 " (ingest its published run first)")  # fmt: skip
            actual = publish.sha256_file(Path(tmp) / name)
            if actual != recorded["sha256"]:
                raise ValueError(f"{name}: sha256 {actual} differs from {recorded['sha256']} in {provenance}; "
                                 "not installed (the checkpoint is not the published run's)")  # fmt: skip
            target = repo / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(Path(tmp) / name, target)
            installed.append(name)
    return installed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdn.reproduce.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path)
    parser.add_argument("--repo", type=Path, default=Path("."))
    parser.add_argument("--verify", action="store_true", help="only check reproduction/MANIFEST.sha256")
    args = parser.parse_args(argv)
    try:
        if not args.verify:
            if args.folder is None:
                parser.error("give the folder holding published.tar.NN, or --verify")
            print(f"installed {len(ingest(args.folder, args.repo))} files into {args.repo / 'reproduction'}")
            for name in ingest_models(args.folder, args.repo):
                print(f"installed {args.repo / name} (sha256 as in its provenance)")
        publish.verify(args.repo / "reproduction")
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("reproduction/MANIFEST.sha256: every file matches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
