"""Stage `evaluate`: the field's metrics on the generated test images, with a wrong-EEG control."""
import _bootstrap  # noqa: F401  (first: this checkout's dreamdiffusion and CPU kernels, before torch loads)
from pathlib import Path

import dreamdiffusion.core.offline  # noqa: F401  (first: models load from models/ only, never from the hub)
from dreamdiffusion.core.cli import run_stage
from dreamdiffusion.core.results import details_path
from dreamdiffusion.core.sections import stage_params
from dreamdiffusion.evaluate import run as evaluate

PARAMS = stage_params("evaluate")
PATHS = evaluate.EvaluatePaths(
    foundation=Path("models/foundation"), finetune=Path("models/finetune"), eeg=Path("data/processed/eeg.h5"),
    images=Path("data/processed/images.h5"), generated=Path("data/generated"), metrics=details_path("evaluate"),
    per_class=Path("metrics/eval_per_class.csv"), confusion=Path("metrics/eval_confusion.png"))


def main(params: dict, log):
    return evaluate.run(params["evaluate"], PATHS, params["seed"], params["compute"])


if __name__ == "__main__":
    run_stage("evaluate", PARAMS, main, datasets=[(PATHS.eeg, "test"), (PATHS.images, "test")])
