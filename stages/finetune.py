"""Stage `finetune`: condition Stable Diffusion on the pretrained EEG encoder, selected on val.

Each distinct train/val image is encoded once (VAE + CLIP) into a features file under
cache/image_features/ keyed by the foundation and the images (reused by later runs); resume
checkpoints live in checkpoints/finetune/<resume name>/ and are removed after a successful run
unless `finetune.keep_checkpoints`. `compute.processes: N` trains on N processes (GPUs).
"""
import _bootstrap  # noqa: F401  (first: this checkout's dreamdiffusion and CPU kernels, before torch loads)
from pathlib import Path

import dreamdiffusion.core.offline  # noqa: F401  (first: models load from models/ only, never from the hub)
from dreamdiffusion.core.cli import run_stage
from dreamdiffusion.core.results import details_path
from dreamdiffusion.core.sections import stage_params
from dreamdiffusion.core.tracking import project_root
from dreamdiffusion.finetune import run as finetune

PARAMS = stage_params("finetune")
PATHS = finetune.FinetunePaths(
    foundation=Path("models/foundation"), encoder=Path("models/pretrain"), eeg=Path("data/processed/eeg.h5"),
    images=Path("data/processed/images.h5"), model=Path("models/finetune"),
    checkpoints=project_root() / "checkpoints/finetune", features=project_root() / "cache/image_features",
    metrics=details_path("finetune"), history=Path("metrics/finetune_loss.csv"),
    grid=Path("metrics/finetune_val_grid.png"), loss_figure=Path("metrics/finetune_loss.png"))


def main(params: dict, log):
    return finetune.run(params["finetune"], PATHS, params["seed"], params["compute"], log)


if __name__ == "__main__":
    run_stage("finetune", PARAMS, main, distributed=True, datasets=[(PATHS.eeg, "train"), (PATHS.images, "train")])
