"""Print the MLflow UI address of the project's experiment, opened on its training runs.

MLflow 3.17's UI opens every experiment in its "GenAI" view (traces, empty here) unless the address
asks for `workflowType=machine_learning` (the experiment's `mlflow.experimentKind` tag no longer
decides it), so `make ui` prints this address:

    python -m dreamdiffusion.tools.ui_url [--port 5000] [--params params.yaml]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dreamdiffusion.core.config import ConfigError, load_params

VIEW = "workflowType=machine_learning"


def ui_url(port: int, experiment_id: str | None) -> str:
    """The runs page of `experiment_id` in the 'Model training' view (the experiment list when None)."""
    base = f"http://127.0.0.1:{port}/#/experiments"
    return f"{base}/{experiment_id}/runs?{VIEW}" if experiment_id else f"{base}?{VIEW}"


def experiment_id(root: Path, name: str) -> str | None:
    """The id of experiment `name` in the project's MLflow store; None before any stage has run."""
    from dreamdiffusion.core.tracking import DB_NAME, tracking_uri

    if not (root / DB_NAME).exists():
        return None
    from mlflow.tracking import MlflowClient

    experiment = MlflowClient(tracking_uri(root)).get_experiment_by_name(name)
    return experiment.experiment_id if experiment else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    from dreamdiffusion.core.tracking import TrackingConfig

    try:
        name = load_params(args.params, {"tracking": TrackingConfig})["tracking"].experiment
    except ConfigError as err:
        print(f"ui_url: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"MLflow UI, experiment {name!r} on its training runs: "
          f"{ui_url(args.port, experiment_id(args.params.resolve().parent, name))}")


if __name__ == "__main__":
    main()
