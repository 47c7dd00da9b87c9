"""Stage `generate`: images from every test EEG trial (+ a wrong-EEG control set), with grids."""
import _bootstrap  # noqa: F401  (first: this checkout's dreamdiffusion and CPU kernels, before torch loads)
from pathlib import Path

import dreamdiffusion.core.offline  # noqa: F401  (first: models load from models/ only, never from the hub)
from dreamdiffusion.core.cli import run_stage
from dreamdiffusion.core.sections import stage_params
from dreamdiffusion.generate import run as generate

PARAMS = stage_params("generate")
PATHS = generate.GeneratePaths(
    foundation=Path("models/foundation"), finetune=Path("models/finetune"), eeg=Path("data/processed/eeg.h5"),
    images=Path("data/processed/images.h5"), out=Path("data/generated"), overview=Path("metrics/generate_overview.png"))


def main(params: dict, log):
    return generate.run(params["generate"], PATHS, params["seed"], params["compute"])


if __name__ == "__main__":
    run_stage("generate", PARAMS, main, datasets=[(PATHS.eeg, "test"), (PATHS.images, "test")])
