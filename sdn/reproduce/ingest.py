"""Install the runs a GPU call published into the repository's ``reproduction/`` tree and rewrite its manifest.

python -m sdn.reproduce.ingest FOLDER [--repo .]      # FOLDER holds published.tar.NN (from gpu-reproduce.sh)
python -m sdn.reproduce.ingest --verify [--repo .]    # check reproduction/MANIFEST.sha256
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sdn.reproduce import pack, publish


def ingest(folder: str | os.PathLike[str], repo: str | os.PathLike[str]) -> list[str]:
    """Unpack ``folder/published.tar.*`` into ``repo`` (members under ``reproduction/``); rewrite the manifest."""
    names = pack.unpack(folder, "published", repo)
    bad = [n for n in names if not n.startswith("reproduction/")]
    if bad:
        raise ValueError(f"{folder}/published.tar holds files outside reproduction/: {bad[:3]}")
    publish.write_manifest(Path(repo) / "reproduction")
    return names


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
        publish.verify(args.repo / "reproduction")
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("reproduction/MANIFEST.sha256: every file matches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
