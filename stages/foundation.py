"""Stage `foundation`: build models/foundation/ (demo: trained here; pretrained: snapshotted) and measure it.

Reads only data/processed/images.h5 (train + extra images to train, val to measure; never test).
"""
import _bootstrap  # noqa: F401  (first: this checkout's dreamdiffusion and CPU kernels, before torch loads)
from pathlib import Path

from dreamdiffusion.core.cli import run_stage
from dreamdiffusion.core.results import details_path
from dreamdiffusion.core.sections import stage_params
from dreamdiffusion.foundation import run as foundation

PARAMS = stage_params("foundation")
PATHS = foundation.FoundationPaths(images=Path("data/processed/images.h5"), models=Path("models/foundation"),
                              metrics=details_path("foundation"),
                              recon_figure=Path("metrics/foundation_recon.png"),
                              captions_figure=Path("metrics/foundation_captions.png"))


def main(params: dict, log):
    return foundation.run(params["foundation"], PATHS, params["seed"], params["compute"])


if __name__ == "__main__":
    run_stage("foundation", PARAMS, main, datasets=[(PATHS.images, "train")])
