"""Stage `finetune`: condition Stable Diffusion on the pretrained EEG encoder, selected on val.

Each distinct train/val image is encoded once (VAE + CLIP) into a features file under
cache/image_features/ keyed by the foundation and the images (reused by later runs); resume
checkpoints live in checkpoints/finetune/<run key>/ and are removed after a successful run
unless `finetune.keep_checkpoints`. `compute.processes: N` trains on N processes (GPUs).
"""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from accelerate import PartialState  # noqa: E402

from dreamdiffusion.cli import run_stage  # noqa: E402
from dreamdiffusion.compute import ComputeConfig, resolve_device  # noqa: E402
from dreamdiffusion.data.processed import load_images, load_paired_eeg  # noqa: E402
from dreamdiffusion.finetune.data import cached_features, features_key, finetune_data, write_features  # noqa: E402
from dreamdiffusion.finetune.load import save_finetuned  # noqa: E402
from dreamdiffusion.finetune.sample import generate, make_scheduler  # noqa: E402
from dreamdiffusion.finetune.train import FinetuneConfig, build_models, finetune  # noqa: E402
from dreamdiffusion.finetune.trainable import count_parameters  # noqa: E402
from dreamdiffusion.foundation.judge import to_float_images  # noqa: E402
from dreamdiffusion.foundation.load import load_foundation  # noqa: E402
from dreamdiffusion.io import sha256_file, write_json  # noqa: E402
from dreamdiffusion.plots import save_image_grid, write_history_csv  # noqa: E402
from dreamdiffusion.tracking import TrackingConfig, project_root  # noqa: E402

PARAMS = {"seed": int, "tracking": TrackingConfig, "compute": ComputeConfig, "finetune": FinetuneConfig}
FOUNDATION, ENCODER = Path("models/foundation"), Path("models/pretrain")
EEG, IMAGES = Path("data/processed/eeg.h5"), Path("data/processed/images.h5")
OUT, RESUME, FEATURES = Path("models/finetune"), Path("checkpoints/finetune"), Path("cache/image_features")
METRICS, HISTORY, GRID = Path("metrics/finetune.json"), Path("metrics/finetune_loss.csv"), Path("metrics/finetune_val_grid.png")
LOSS_KEYS = ["train_loss", "train_diffusion_loss", "train_clip_loss", "val_loss", "val_diffusion_loss",
             "val_clip_loss", "val_clip_cosine", "val_nway_top1"]


def image_features(paired, image_set, config: FinetuneConfig, device: str) -> Path:
    """The features file of the train/val images (encoded by the main process first, then shared)."""
    rows = np.unique(paired.image_index)
    key = features_key(FOUNDATION, sha256_file(IMAGES), rows)
    encode = lambda tmp: write_features(load_foundation(FOUNDATION, device, parts=("vae", "clip")),  # noqa: E731
                                        image_set.images, rows, config.encode_batch_size, tmp)
    with PartialState(cpu=device == "cpu").main_process_first():
        return cached_features(project_root() / FEATURES, key, encode)


def val_grid(result, data, image_set, paired, seed: int, config: FinetuneConfig) -> None:
    """Ground truth and a generated image of 8 val trials (evenly spaced), as one PNG."""
    models = result.models
    rows = np.linspace(0, len(data.val) - 1, min(8, len(data.val))).round().astype(int)
    eeg = torch.stack([data.val[int(r)][1] for r in rows])
    generated = generate(models.conditioner, models.unet, models.vae, make_scheduler("ddim", models.noise_scheduler.config),
                         eeg, [seed + int(r) for r in rows], config.val_steps, config.val_guidance).cpu()
    truth = to_float_images(image_set.images[paired.image_index[paired.subset("val")][rows]])
    save_image_grid(torch.cat([truth, generated]), GRID, nrow=len(rows))


def main(params: dict, run) -> dict:
    config: FinetuneConfig = params["finetune"]
    device = str(resolve_device(params["compute"]))
    paired = load_paired_eeg(EEG, splits=("train", "val"))  # the test split is never read
    image_set = load_images(IMAGES)
    features = image_features(paired, image_set, config, device)
    foundation = load_foundation(FOUNDATION, device, parts=("stable_diffusion", "judge"))
    models = build_models(config, foundation, ENCODER, params["seed"])
    data = finetune_data(paired, features, image_set, foundation, config)
    inputs = "-".join(sha256_file(p)[:16] for p in (EEG, IMAGES, ENCODER / "encoder.safetensors",
                                                    FOUNDATION / "manifest.json"))
    result = finetune(config, models, data, foundation, params["seed"], project_root() / RESUME, inputs,
                      lambda m, step: run.log_metrics(m, step=step), compute=params["compute"])
    if not result.is_main_process:
        return {}
    save_finetuned(OUT, result.models.conditioner, result.models.unet,
                   {"train_unet": config.train_unet, "best_epoch": result.best_epoch, "seed": params["seed"]})
    val_grid(result, data, image_set, paired, params["seed"], config)
    write_history_csv(result.history, HISTORY, LOSS_KEYS)
    best = next(h for h in result.history if h["epoch"] == result.best_epoch)
    last = result.history[-1]
    trainable, total = (sum(count_parameters(m)[i] for m in (result.models.conditioner, result.models.unet))
                        for i in (0, 1))
    metrics = {
        "best_epoch": result.best_epoch, "epochs": len(result.history),
        "train_loss": last["train_loss"], "val_loss": best["val_loss"],
        "val_diffusion_loss": best["val_diffusion_loss"], "val_clip_loss": best["val_clip_loss"],
        "val_clip_cosine": best["val_clip_cosine"], "val_nway_top1": best["val_nway_top1"],
        "final_val_loss": last.get("val_loss"), "final_val_nway_top1": last.get("val_nway_top1"),
        "val_nway": result.val_nway, "val_trials": len(data.probe_rows),
        "trainable_params": int(trainable), "total_params": int(total),
        "train_trials": len(data.train), "val_trials_total": len(data.val),
        "resumed_from_epoch": result.resumed_from, "seconds": round(result.seconds, 1),
    }
    write_json(METRICS, metrics)
    for path in (METRICS, GRID, HISTORY):
        run.log_artifact(path)
    if not config.keep_checkpoints:  # finished and written: the resume state is no longer needed
        result.checkpoints.remove()
    return metrics


if __name__ == "__main__":
    run_stage("finetune", PARAMS, main, distributed=True)
