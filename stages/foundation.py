"""Stage `foundation`: build models/foundation/ (demo: trained here; pretrained: snapshotted) and measure it.

Reads only data/processed/images.h5 (train + extra images to train, val to measure; never test).
"""
from pathlib import Path

from dreamdiffusion.cli import run_stage
from dreamdiffusion.compute import ComputeConfig, apply_threads, resolve_device
from dreamdiffusion.data.processed import load_images
from dreamdiffusion.foundation.build import build_foundation
from dreamdiffusion.foundation.config import FoundationConfig
from dreamdiffusion.io import DataError, atomic_path, finite_metrics, write_json
from dreamdiffusion.tracking import TrackingConfig

PARAMS = {"seed": int, "tracking": TrackingConfig, "compute": ComputeConfig, "foundation": FoundationConfig}
IMAGES = Path("data/processed/images.h5")
MODELS = Path("models/foundation")
METRICS = Path("metrics/foundation.json")
FIGURES = {"recon": Path("metrics/foundation_recon.png"), "captions": Path("metrics/foundation_captions.png")}


def main(params: dict, run) -> dict:
    try:
        images = load_images(IMAGES)
    except (OSError, KeyError) as err:
        raise DataError(f"{IMAGES}: cannot read ({err}); run the `preprocess` stage first") from None
    apply_threads(params["compute"])
    with atomic_path(MODELS) as out:
        out.mkdir()
        metrics, figures = build_foundation(images, params["foundation"], params["seed"], out,
                                            str(resolve_device(params["compute"])))
    for name, path in FIGURES.items():
        with atomic_path(path) as tmp:
            figures[name].save(tmp, format="PNG")
        run.log_artifact(path, "figures")
    write_json(METRICS, finite_metrics(metrics))
    run.log_artifact(METRICS)
    run.log_artifact(MODELS / "manifest.json")
    return metrics


if __name__ == "__main__":
    run_stage("foundation", PARAMS, main)
