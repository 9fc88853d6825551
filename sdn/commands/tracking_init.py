"""``sdn tracking-init``: create the MLflow store (SQLite schema) and experiment once, before jobs fan out."""

from __future__ import annotations

import argparse
import logging

from sdn.tracking import MlflowUnavailable, init_store, tracking_config

NAME = "tracking-init"
HELP = "Create the MLflow store and experiment once, so parallel jobs do not race to create them."

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--uri", default=None, help="tracking URI (default: SDN_TRACKING_URI, MLFLOW_TRACKING_URI)")
    parser.add_argument("--experiment", default=None, help="experiment name (default: SDN_EXPERIMENT or 'sdn')")


def run(args: argparse.Namespace) -> int:
    config = tracking_config()
    if not config.enabled:
        print("tracking is off (SDN_TRACKING=off): nothing to initialise")
        return 0
    uri = args.uri or config.uri
    if not uri:
        raise ValueError("no tracking URI: pass --uri or set SDN_TRACKING_URI (or MLFLOW_TRACKING_URI)")
    experiment = args.experiment or config.experiment
    try:
        experiment_id = init_store(uri, experiment, deadline=config.deadline)
    except MlflowUnavailable:
        return 0  # warned once already; jobs will keep journals for `sdn sync-mlflow`
    except Exception as err:  # noqa: BLE001 - tracking trouble must not stop the workflow
        log.warning(
            "could not initialise MLflow at %s: %s: %s; jobs will keep journals only", uri, type(err).__name__, err
        )
        return 0
    print(f"MLflow experiment {experiment!r} (id {experiment_id}) ready at {uri}")
    return 0
