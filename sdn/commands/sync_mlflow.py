"""``sdn sync-mlflow``: upload the journals of runs MLflow did not receive (server down, no mlflow installed)."""

from __future__ import annotations

import argparse

from sdn.tracking import sync_results, tracking_config

NAME = "sync-mlflow"
HELP = "Upload every unsynced tracking journal under a results folder to MLflow (idempotent)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", required=True, help="folder searched for .mlflow-journal*.json files")
    parser.add_argument("--uri", default=None, help="tracking URI (default: SDN_TRACKING_URI, MLFLOW_TRACKING_URI)")
    parser.add_argument("--experiment", default=None, help="experiment name (default: the one in each journal)")
    parser.add_argument(
        "--include-running",
        action="store_true",
        help="also upload journals still marked RUNNING (jobs that were killed), as KILLED runs",
    )


def run(args: argparse.Namespace) -> int:
    uri = args.uri or tracking_config().uri
    if not uri:
        raise ValueError("no tracking URI: pass --uri or set SDN_TRACKING_URI (or MLFLOW_TRACKING_URI)")
    config = tracking_config()
    summary = sync_results(
        args.results, uri, experiment=args.experiment, include_running=args.include_running, deadline=config.deadline
    )
    print(
        f"uploaded {len(summary.uploaded)}, already synced {len(summary.already_synced)}, "
        f"still running {len(summary.skipped_running)}, failed {len(summary.failed)}, "
        f"corrupt {len(summary.corrupt)} (URI {uri})"
    )
    for path in summary.failed:
        print(f"  failed: {path}")
    for path in summary.corrupt:
        print(f"  corrupt, skipped (fix or delete it): {path}")
    return 1 if summary.failed or summary.corrupt else 0
