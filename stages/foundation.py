"""Stage `foundation`: build models/foundation/ (demo: trained here; pretrained: snapshotted) and measure it.

Reads only data/processed/images.h5 (train + extra images to train, val to measure; never test).
"""
import _bootstrap  # noqa: F401  (first: this checkout's dreamdiffusion and CPU kernels, before torch loads)
from pathlib import Path

from dreamdiffusion.cli import run_stage
from dreamdiffusion.compute import ComputeConfig
from dreamdiffusion.foundation import build
from dreamdiffusion.foundation.config import FoundationConfig
from dreamdiffusion.headline import details_path
from dreamdiffusion.tracking import TrackingConfig

PARAMS = {"seed": int, "tracking": TrackingConfig, "compute": ComputeConfig, "foundation": FoundationConfig}
PATHS = build.FoundationPaths(images=Path("data/processed/images.h5"), models=Path("models/foundation"),
                              metrics=details_path("foundation"),
                              recon_figure=Path("metrics/foundation_recon.png"),
                              captions_figure=Path("metrics/foundation_captions.png"))


def main(params: dict, log):
    return build.run(params["foundation"], PATHS, params["seed"], params["compute"])


if __name__ == "__main__":
    run_stage("foundation", PARAMS, main, datasets=[(PATHS.images, "train")])
