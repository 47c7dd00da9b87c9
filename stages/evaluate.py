"""Stage `evaluate`: the field's metrics on the generated test images, with a wrong-EEG control."""
import _bootstrap  # noqa: F401  (first: this checkout's dreamdiffusion and CPU kernels, before torch loads)
from pathlib import Path

import dreamdiffusion.offline  # noqa: F401  (first: models load from models/ only, never from the hub)
from dreamdiffusion.cli import run_stage
from dreamdiffusion.compute import ComputeConfig
from dreamdiffusion.evaluation import run as evaluate
from dreamdiffusion.evaluation.report import EvaluateConfig
from dreamdiffusion.headline import details_path
from dreamdiffusion.tracking import TrackingConfig

PARAMS = {"seed": int, "tracking": TrackingConfig, "compute": ComputeConfig, "evaluate": EvaluateConfig}
PATHS = evaluate.EvaluatePaths(
    foundation=Path("models/foundation"), finetune=Path("models/finetune"), eeg=Path("data/processed/eeg.h5"),
    images=Path("data/processed/images.h5"), generated=Path("data/generated"), metrics=details_path("evaluate"),
    per_class=Path("metrics/eval_per_class.csv"), confusion=Path("metrics/eval_confusion.png"))


def main(params: dict, log):
    return evaluate.run(params["evaluate"], PATHS, params["seed"], params["compute"])


if __name__ == "__main__":
    run_stage("evaluate", PARAMS, main, datasets=[(PATHS.eeg, "test"), (PATHS.images, "test")])
